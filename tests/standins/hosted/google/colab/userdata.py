"""Stand-in for googlecolab/colabtools `google/colab/userdata.py`: `get(key)` and its exceptions.

Same classes (NotebookAccessError is a plain Exception; SecretNotFoundError and TimeoutException
derive from errors.Error) and the same flow: a `GetSecret` request with timeout_sec=10, answered
by the `GetSecret` handler of `_message.frontend` with {'exists', 'access', 'payload'}. In a process
that is not the notebook's kernel the request raises AttributeError, as upstream.
"""

import re as _re

from google.colab import _message
from google.colab import errors


class NotebookAccessError(Exception):
  """Exception thrown when the current notebook doesn't have access to the requested secret."""

  def __init__(self, key):
    super().__init__(f'Notebook does not have access to secret {key}')


class SecretNotFoundError(errors.Error):
  """Exception thrown when the requested secret is not found."""

  def __init__(self, key):
    super().__init__(f'Secret {key} does not exist.')


class TimeoutException(errors.Error):
  """Exception thrown when requesting a secret times out."""

  def __init__(self, key):
    super().__init__(f'Requesting secret {key} timed out. Secrets can only be fetched when'
                     ' running from the Colab UI.')


def get(key):
  """Fetches the value for specified secret keys."""
  if not key or not isinstance(key, str):
    raise ValueError('Please enter a valid secret name')
  if _re.search(r'\s', key):
    raise ValueError('Secret name cannot contain spaces or whitespace')
  resp = _message.blocking_request('GetSecret', request={'key': key}, timeout_sec=10)
  if not resp:
    raise TimeoutException(key)
  if not resp.get('exists', False):
    raise SecretNotFoundError(key)
  if not resp.get('access', False):
    raise NotebookAccessError(key)
  return resp.get('payload', '')
