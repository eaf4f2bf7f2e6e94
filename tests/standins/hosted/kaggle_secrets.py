"""Stand-in for Kaggle/docker-python `patches/kaggle_secrets.py`: `UserSecretsClient`, `GcpTarget`.

Same names, endpoints and errors: `get_secret(label)` posts to /requests/GetUserSecretByLabelRequest
(ValidationError for an empty label, BackendError for an answer without a secret), the GCS access
token comes from /requests/GetUserSecretRequest with Target 2; the "Google Cloud SDK" add-on's
credential (`get_gcloud_credential`) is the secret labelled `__gcloud_sdk_auth__`, NotFoundError when
the backend's error says 'No user secrets exist' (other BackendErrors pass through); CredentialError
and BackendError are re-exported from kaggle_web_client, as upstream does. Written for these tests
from upstream's behaviour (read at commit 78aaa43); none of its code is copied.
"""

from datetime import datetime, timedelta
from enum import Enum, unique
from typing import Optional, Tuple

from kaggle_web_client import BackendError, CredentialError, KaggleWebClient  # noqa: F401


class ValidationError(Exception):
    pass


class NotFoundError(Exception):
    pass


@unique
class GcpTarget(Enum):
    """Enum class to store GCP targets."""
    BIGQUERY = (1, "BigQuery")
    GCS = (2, "Google Cloud Storage")
    CLOUDAI = (3, "Google Cloud AI Platform")

    def __init__(self, target, service):
        self._target = target
        self._service = service

    @property
    def target(self):
        return self._target

    @property
    def service(self):
        return self._service


class UserSecretsClient():
    GET_USER_SECRET_ENDPOINT = '/requests/GetUserSecretRequest'
    GET_USER_SECRET_BY_LABEL_ENDPOINT = '/requests/GetUserSecretByLabelRequest'

    def __init__(self):
        self.web_client = KaggleWebClient()

    def get_secret(self, label) -> str:
        if label is None or len(label) == 0:
            raise ValidationError("Label must be non-empty.")
        response_json = self.web_client.make_post_request({'Label': label}, self.GET_USER_SECRET_BY_LABEL_ENDPOINT)
        if 'secret' not in response_json:
            raise BackendError(f'Unexpected response from the service. Response: {response_json}')
        return response_json['secret']

    def get_gcloud_credential(self) -> str:
        """The Google Cloud SDK add-on's credential JSON attached to this kernel."""
        try:
            return self.get_secret("__gcloud_sdk_auth__")
        except BackendError as error:
            if "No user secrets exist" in str(error.args):
                raise NotFoundError("Google Cloud SDK credential not found.") from None
            raise

    def _get_gcs_access_token(self) -> Tuple[str, Optional[datetime]]:
        return self._get_access_token(GcpTarget.GCS)

    def _get_access_token(self, target: GcpTarget) -> Tuple[str, Optional[datetime]]:
        response_json = self.web_client.make_post_request({'Target': target.target}, self.GET_USER_SECRET_ENDPOINT)
        if 'secret' not in response_json:
            raise BackendError(f'Unexpected response from the service. Response: {response_json}')
        expires = response_json.get('expiresInSeconds')
        expiry = datetime.utcnow() + timedelta(seconds=expires) if expires else None
        return response_json['secret'], expiry
