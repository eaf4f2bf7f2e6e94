"""Stand-in for googlecolab/colabtools `google/colab/_message.py`: requests to the Colab frontend.

Same names and contract: `send_request(request_type, request_body, parent=None, expect_reply=True)`
returns a message id; `read_reply_from_input(message_id, timeout_sec=None)` returns the frontend's
reply data, or None when no reply comes within `timeout_sec`; `blocking_request(request_type,
request='', timeout_sec=5, parent=None)` is the two in a row; `MessageError` when the frontend
replies with an error. As upstream, both halves reach the frontend through the kernel
(`_ipython.get_kernelapp()` to send, `_ipython.get_kernel()` to read), so in a process that is not
the notebook's kernel they raise AttributeError before anything is sent.
The real one writes to the kernel's iopub socket and polls its stdin socket; here `frontend` is a
dict {request_type: handler(request) -> data} (None: no frontend answers, as on a runtime driven
from VS Code). Deviation: without a frontend the wait is min(timeout_sec, NO_FRONTEND_WAIT) so tests
stay fast, and timeout_sec=None without a frontend raises AssertionError instead of blocking forever.
"""

import time

from google.colab import _ipython as ipython
from google.colab import errors

frontend = None  # {request_type: handler}; None: nobody answers
NO_FRONTEND_WAIT = 0.3
requests = []  # (request_type, request, timeout_sec) as sent, for tests to inspect
_pending = {}  # message id -> (request_type, request)
_msg_id = 0


class MessageError(errors.Error):
  """Thrown on error response from frontend."""


def send_request(request_type, request_body, parent=None, expect_reply=True):
  """Sends the given message to the frontend without waiting for a reply."""
  ipython.get_kernelapp()  # upstream: instance = ipython.get_kernelapp(); AttributeError without a kernel
  global _msg_id
  request_id = None
  if expect_reply:
    _msg_id += 1
    request_id = _msg_id
    _pending[request_id] = (request_type, request_body)
  return request_id


def read_reply_from_input(message_id, timeout_sec=None):
  """Reads a reply to the message (None at the timeout); MessageError if the frontend reports one."""
  ipython.get_kernel()  # upstream: _read_next_input_message reads the kernel's stdin socket
  request_type, request = _pending.pop(message_id)
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


def blocking_request(request_type, request='', timeout_sec=5, parent=None):
  """Calls the front end with a request, and blocks until a reply is received (or the timeout)."""
  request_id = send_request(request_type, request, parent=parent, expect_reply=True)
  return read_reply_from_input(request_id, timeout_sec)
