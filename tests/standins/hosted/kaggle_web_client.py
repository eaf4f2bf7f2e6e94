"""Stand-in for Kaggle/docker-python `patches/kaggle_web_client.py`: `KaggleWebClient` and its errors.

Same behaviour as the real client, which tests drive against a local HTTP server playing Kaggle's
backend (KAGGLE_URL_BASE points at it): CredentialError without KAGGLE_USER_SECRETS_TOKEN, BackendError
on an unsuccessful answer, the built-in ConnectionError when the backend cannot be reached (internet
off, Kaggle's default) — and, as upstream, also on HTTP errors such as 403: its `except HTTPError`
comes after `except URLError` and is never reached. The except clauses are copied in that order.
"""

import json
import os
import socket
import urllib.request
from urllib.error import HTTPError, URLError

_KAGGLE_DEFAULT_URL_BASE = "https://www.kaggle.com"
_KAGGLE_URL_BASE_ENV_VAR_NAME = "KAGGLE_URL_BASE"
_KAGGLE_USER_SECRETS_TOKEN_ENV_VAR_NAME = "KAGGLE_USER_SECRETS_TOKEN"
TIMEOUT_SECS = 40


class CredentialError(Exception):
    pass


class BackendError(Exception):
    pass


class KaggleWebClient:

    def __init__(self):
        self.url_base = os.getenv(_KAGGLE_URL_BASE_ENV_VAR_NAME) or _KAGGLE_DEFAULT_URL_BASE
        self.jwt_token = os.getenv(_KAGGLE_USER_SECRETS_TOKEN_ENV_VAR_NAME)
        if self.jwt_token is None:
            raise CredentialError('A JWT Token is required to call Kaggle, but none found in environment '
                                  f'variable {_KAGGLE_USER_SECRETS_TOKEN_ENV_VAR_NAME}')
        self.headers = {'Content-type': 'application/json',
                        'X-Kaggle-Authorization': f'Bearer {self.jwt_token}'}

    def make_post_request(self, data: dict, endpoint: str, timeout: int = TIMEOUT_SECS) -> dict:
        url = f'{self.url_base}{endpoint}'
        req = urllib.request.Request(url, headers=self.headers, data=bytes(json.dumps(dict(data)), encoding="utf-8"))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                response_json = json.loads(response.read())
                if not response_json.get('wasSuccessful') or 'result' not in response_json:
                    raise BackendError(f'Unexpected response from the service. Response: {response_json}.')
                return response_json['result']
        except (URLError, socket.timeout) as e:
            if isinstance(
                    e, socket.timeout) or isinstance(
                    e.reason, socket.timeout):
                raise ConnectionError(
                    'Timeout error trying to communicate with service. Please ensure internet is on.') from e
            raise ConnectionError(
                'Connection error trying to communicate with service.') from e
        except HTTPError as e:  # unreachable upstream too: HTTPError is a URLError, caught above
            if e.code == 401 or e.code == 403:
                raise CredentialError(
                    f'Service responded with error code {e.code}.'
                    ' Please ensure you have access to the resource.') from e
            raise BackendError('Unexpected response from the service.') from e
