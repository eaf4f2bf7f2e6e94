"""Stand-in for the `google.colab` package (googlecolab/colabtools `google/colab/__init__.py`), for tests.

Only the modules colab_magics calls: `auth`, `errors`, `output`, `userdata` and the `_message` channel
they share. The Colab frontend (the browser tab that answers requests) is modelled by
`_message.frontend`: None means no frontend answers, as on a runtime driven from VS Code or a script.
"""

from google.colab import _message, auth, errors, output, userdata  # noqa: F401
