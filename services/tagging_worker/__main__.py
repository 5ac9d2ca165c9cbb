"""`python -m services.tagging_worker`"""
from .app import main

if __name__ == "__main__":  # the guard matters: the extractor's child process re-imports this module
    main()
