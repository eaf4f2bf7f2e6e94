"""Stand-in for the `google.colab` package (googlecolab/colabtools `google/colab/__init__.py`), for tests.

Only the modules colab_magics calls: `auth`, `errors`, `output`, `userdata`, the `_message` channel
they share and `_ipython`, their way to the kernel. The Colab frontend (the browser tab that answers
requests) is modelled by `_message.frontend`: None means no frontend answers, as on a runtime driven
from VS Code. A process that is not the notebook's kernel (no `get_ipython().kernel`) cannot reach
any frontend: every request raises AttributeError, as upstream.
"""

from google.colab import _ipython, _message, auth, errors, output, userdata  # noqa: F401
