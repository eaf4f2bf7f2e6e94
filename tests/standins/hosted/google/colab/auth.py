"""Stand-in for googlecolab/colabtools `google/colab/auth.py`: `authenticate_user`.

Same signature `authenticate_user(clear_output=True, project_id=None)` and behaviour: with a
project_id it sets GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_QUOTA_PROJECT; on a managed runtime
(upstream: the file /var/colab/mp exists; here: MANAGED is True) it raises NotImplementedError;
valid user credentials already in place → returns; else it asks the frontend to sign the user in,
writes their *user* credentials (type authorized_user) to $DATALAB_ROOT/content/.adc/adc.json,
points GOOGLE_APPLICATION_CREDENTIALS there, and raises errors.AuthorizationError when that fails.
The frontend's answer is the `request_auth` handler of `_message.frontend` (True: signed in); as
upstream (its USE_AUTH_EPHEM path, Colab's default), that request has no timeout (the stand-in
channel fails loudly instead of hanging), and in a process that is not the notebook's kernel it
raises AttributeError (`_message.blocking_request` → `_ipython.get_kernelapp()`), while valid user
credentials already in place still return at once.
"""

import json as _json
import os as _os

from google.colab import _message
from google.colab import errors as _errors

MANAGED = False
calls = []  # the keyword arguments of every call, for tests


def _get_adc_path():
  return _os.path.join(_os.environ.get('DATALAB_ROOT', '/'), 'content/.adc/', 'adc.json')


def _check_adc():
  path = _os.environ.get('GOOGLE_APPLICATION_CREDENTIALS')
  try:
    with open(path or _get_adc_path()) as f:
      return _json.load(f).get('type') == 'authorized_user'
  except (OSError, ValueError, TypeError):
    return False


def authenticate_user(clear_output=True, project_id=None):
  """Ensures that the given user is authenticated."""
  calls.append({'clear_output': clear_output, 'project_id': project_id})
  if project_id is not None:
    _os.environ['GOOGLE_CLOUD_PROJECT'] = project_id
    _os.environ['GOOGLE_CLOUD_QUOTA_PROJECT'] = project_id
  if MANAGED:
    raise NotImplementedError(__name__ + ' is unsupported in this environment.')
  if _check_adc():
    return
  _os.environ['GOOGLE_APPLICATION_CREDENTIALS'] = _get_adc_path()
  if _message.blocking_request('request_auth', {'authType': 'auth_user_ephemeral'}, timeout_sec=None):
    _os.makedirs(_os.path.dirname(_get_adc_path()), exist_ok=True)
    with open(_get_adc_path(), 'w') as f:
      _json.dump({'type': 'authorized_user', 'client_id': 'standin.apps.googleusercontent.com',
                  'client_secret': 'standin', 'refresh_token': 'standin-refresh-token'}, f)
  if _check_adc():
    return
  raise _errors.AuthorizationError('Failed to fetch user credentials')
