"""``python -m aiida_voltnet.cli``: the ``voltnet`` command, for environments without the console script on PATH."""
from aiida_voltnet.cli import cli

if __name__ == '__main__':
    cli(prog_name='voltnet')
