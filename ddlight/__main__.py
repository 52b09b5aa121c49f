"""``python -m ddlight`` is the ``ddlight`` command."""

from ddlight.cli import main

if __name__ == "__main__":
    main()
