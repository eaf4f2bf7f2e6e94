"""Stand-in for googlecolab/colabtools `google/colab/output/__init__.py` (`_js.py`, `_util.py`).

`eval_js(script, ignore_result=False, timeout_sec=None)` is `_js.py`'s code: it asks
`_ipython.get_kernel()` first (AttributeError in a process that is not the notebook's kernel), sends
`cell_javascript_eval` and returns the reply (None at the timeout) through `_message`.
`serve_kernel_port_as_iframe(port, path='/', width='100%', height='400', cache_in_notebook=False)`
displays the same Javascript the real one does (an iframe on google.colab.kernel.proxyPort), and
records the call in `served` for tests; as upstream it goes through IPython's `display`, which
without a running shell prints the object's repr to stdout.
"""

import json

from google.colab import _ipython, _message

served = []  # (port, path, width, height) of every iframe shown


def eval_js(script, ignore_result=False, timeout_sec=None):
  """Evaluates the Javascript within the context of the current cell."""
  args = ['cell_javascript_eval', {'script': script}]
  kernel = _ipython.get_kernel()
  request_id = _message.send_request(*args, parent=kernel.shell.parent_header)
  if ignore_result:
    return
  return _message.read_reply_from_input(request_id, timeout_sec)


def serve_kernel_port_as_iframe(port, path='/', width='100%', height='400', cache_in_notebook=False):
  """Displays an iframe in the output to a port on the kernel."""
  from IPython import display

  served.append((port, path, width, height))
  code = """(async (port, path, width, height, cache, element) => {
    if (!google.colab.kernel.accessAllowed && !cache) {
      return;
    }
    element.appendChild(document.createTextNode(''));
    const url = await google.colab.kernel.proxyPort(port, {cache});
    const iframe = document.createElement('iframe');
    iframe.src = new URL(path, url).toString();
    iframe.height = height;
    iframe.width = width;
    iframe.style.border = 0;
    element.appendChild(iframe);
  })""" + '({port}, {path}, {width}, {height}, {cache}, window.element)'.format(
      port=port, path=json.dumps(path), width=json.dumps(width), height=json.dumps(height),
      cache=json.dumps(cache_in_notebook))
  display.display(display.Javascript(code))


def serve_kernel_port_as_window(port, path='/', anchor_text=None, skip_warning=False):
  """DEPRECATED upstream ("Browser security updates have broken this feature"): fails loudly here."""
  raise AssertionError('serve_kernel_port_as_window is deprecated: use serve_kernel_port_as_iframe')
