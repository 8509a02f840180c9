"""Using a trained run: chat with it in the terminal or on a local web page."""
