"""`python -m bllama ...`: the `bllama` command line where the console script is not on the PATH (a venv's bin/ not
activated, `pip install --user` without ~/.local/bin on the PATH)."""
from .cli import main

if __name__ == "__main__":
    main()
