"""Stand-in for googlecolab/colabtools `google/colab/_message.py`: requests to the Colab frontend.

Same names and contract: `blocking_request(request_type, request='', timeout_sec=5, parent=None)`
returns the frontend's reply data, or None when no reply comes within `timeout_sec`;
`MessageError` when the frontend replies with an error. The real one polls the kernel's stdin
socket; here `frontend` is a dict {request_type: handler(request) -> data} (None: no frontend).
Deviation: without a frontend the wait is min(timeout_sec, NO_FRONTEND_WAIT) so tests stay fast,
and timeout_sec=None without a frontend raises AssertionError instead of blocking forever.
"""

import time

from google.colab import errors

frontend = None  # {request_type: handler}; None: nobody answers
NO_FRONTEND_WAIT = 0.3
requests = []  # (request_type, request, timeout_sec) as sent, for tests to inspect


class MessageError(errors.Error):
  """Thrown on error response from frontend."""


def blocking_request(request_type, request='', timeout_sec=5, parent=None):
  """Calls the front end with a request, and blocks until a reply is received (or the timeout)."""
  requests.append((request_type, request, timeout_sec))
  handler = (frontend or {}).get(request_type)
  if handler is None:
    if timeout_sec is None:
      raise AssertionError(f'{request_type} without timeout_sec would block forever: no frontend')
    time.sleep(min(timeout_sec, NO_FRONTEND_WAIT))
    return None
  reply = handler(request)
  if isinstance(reply, MessageError):
    raise reply
  return reply
