"""Stand-in for googlecolab/colabtools `google/colab/_ipython.py`: the same code, verbatim.

Every call to the Colab frontend goes through `get_ipython().kernel`: in a process that is not the
notebook's kernel (a `!colab-magics …` shell command, a script) `get_ipython()` is None, or a shell
without a kernel, and the call raises AttributeError. Tests that play a Colab kernel give the shell
a `kernel` attribute (tests/hosted_env.py, fixture `colab`), as ipykernel's shell has one.
"""

import IPython


def get_ipython():
  return IPython.get_ipython()


def get_kernel():
  return get_ipython().kernel


def get_kernelapp():
  return get_ipython().kernel.parent


def in_ipython():
  """Return True iff we're in a IPython like environment."""
  ip = IPython.get_ipython()
  return hasattr(ip, 'kernel')
