"""sovcli: pull, verify, convert, quantize and run open-weight LLMs on machines you own."""

__version__ = "0.1.0"
