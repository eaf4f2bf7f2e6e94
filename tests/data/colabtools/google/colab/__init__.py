"""Ours, not colabtools': the real package __init__ imports the whole of Colab; these tests need only
the modules on the path from eval_js / blocking_request / userdata.get to the kernel."""
