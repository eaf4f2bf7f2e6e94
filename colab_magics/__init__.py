"""colab_magics: IPython magics for training on ephemeral notebook VMs.

`%load_ext colab_magics` registers the magics. Nothing heavy is imported here: the public names in
`__all__` are looked up on first use (PEP 562), and google-cloud-storage, TensorFlow, TensorBoard and
pyngrok are imported inside the functions that need them.

The Python API in short (the modules hold the rest: `colab_magics.mount`, `colab_magics.tensorboard`,
`colab_magics.tunnels`, and the colab_utils names in `colab_magics.gcloud` / `colab_magics.tboard`)::

    from colab_magics import sign_in, save_run, load_run, list_archives, resume, Settings
"""

__version__ = "0.1.0"

#: public name → the module that defines it
_PUBLIC = {
    "sign_in": "auth",
    "save_run": "runs",
    "plan_save": "runs",
    "load_run": "runs",
    "list_archives": "runs",
    "resume": "runs",
    "remove_debris": "runs",
    "Archiver": "archiver",
    "start_background": "archiver",
    "stop_background": "archiver",
    "KerasArchiveCallback": "callbacks",
    "HuggingFaceArchiveCallback": "callbacks",
    "LightningArchiveCallback": "callbacks",
    "Settings": "settings",
    "ColabMagicsError": "errors",
}
__all__ = ["load_ipython_extension", "unload_ipython_extension", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """Register the magics (called by `%load_ext colab_magics`)."""
    from colab_magics.magics import ColabMagics

    ipython.register_magics(ColabMagics)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics and end every child process and mount we started (`%unload_ext`)."""
    from colab_magics import session
    from colab_magics.magics import ColabMagics

    session.current().shutdown("%unload_ext")
    session.current().disarm()
    manager = ipython.magics_manager
    for kind, names in ColabMagics.magics.items():
        for name in names:
            manager.magics[kind].pop(name, None)
    manager.registry.pop("ColabMagics", None)
