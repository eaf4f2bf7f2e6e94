"""colab_magics: IPython magics for training on ephemeral notebook VMs.

`%load_ext colab_magics` registers the magics. Nothing heavy is imported here: google-cloud-storage,
TensorFlow, TensorBoard and pyngrok are imported inside the functions that need them.
"""

__version__ = "0.1.0"


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
