"""Stand-in for googlecolab/colabtools `google/colab/_ipython.py`: how the Colab modules reach the kernel.

Upstream's `get_kernel()` is `get_ipython().kernel` and `get_kernelapp()` its `.parent`; nothing
guards them, so in a process that is not the notebook's kernel (a `!colab-magics …` shell command, a
script) they raise AttributeError: on None when no IPython runs, on the shell when it has no kernel.
Written for these tests from upstream's behaviour; tests that play a Colab kernel give the shell a
`kernel` attribute (tests/hosted_env.py, fixture `colab`), as ipykernel's shell has one.
"""

import IPython


def get_ipython():
  return IPython.get_ipython()


def get_kernel():
  """The running kernel; AttributeError outside one, as upstream."""
  shell = IPython.get_ipython()
  return shell.kernel


def get_kernelapp():
  """The kernel's application (where requests to the frontend are sent)."""
  return get_kernel().parent


def in_ipython():
  """True inside a kernel-backed IPython."""
  return hasattr(IPython.get_ipython(), 'kernel')
