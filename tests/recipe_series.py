"""Run several recipe runs one after the other in one process: ``recipe_series.py RUNS_JSON``, RUNS_JSON
a list of ``[script module, argv]``. Under torchrun every rank runs the series, so one launch (its
imports, process group and DeepSpeed's start-up) serves several runs of a test. Ends like a recipe
(:func:`utils.distributed.run_distributed_cli`); the first run that fails ends the series with its code."""
import importlib
import json
import sys

from utils.distributed import run_distributed_cli


def main():
    for script, argv in json.loads(sys.argv[1]):
        importlib.import_module(script).main(argv)


if __name__ == "__main__":
    run_distributed_cli(main)
