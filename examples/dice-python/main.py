"""dice: rolls dice written in the usual `NdM` notation (the Python twin of examples/dice).

Input `{"roll": "4d6"}`; output a JSON list of the four results, each 1 to 6.
A roll that is not `NdM` with N 1-100 and M 2-1000 fails the call with a ValueError.
"""

import random
import re
import sys

MAX_DICE = 100
MIN_SIDES = 2
MAX_SIDES = 1000

# [0-9], not \d: \d also matches other scripts' digits, which int() would accept.
# At most 9 digits: enough to be out of range, and int() stays cheap.
ROLL = re.compile(r"([0-9]{1,9})[dD]([0-9]{1,9})")

# The operating system's entropy: nothing to seed, and nothing shared between
# instances forked from the same image.
RNG = random.SystemRandom()


def parse_roll(text):
    """Returns (dice, sides) for an `NdM` roll, or raises ValueError."""
    match = ROLL.fullmatch(text) if isinstance(text, str) else None
    dice, sides = (int(match[1]), int(match[2])) if match else (0, 0)
    if not (1 <= dice <= MAX_DICE and MIN_SIDES <= sides <= MAX_SIDES):
        raise ValueError(
            f"invalid roll {text!r}: expected NdM like 4d6 (N 1-{MAX_DICE}, M {MIN_SIDES}-{MAX_SIDES})"
        )
    return dice, sides


def handler(event):
    if not isinstance(event, dict) or "roll" not in event:
        raise ValueError('expected an object like {"roll": "4d6"}')
    dice, sides = parse_roll(event["roll"])
    print(f"rolling {dice}d{sides}", file=sys.stderr)
    return [RNG.randint(1, sides) for _ in range(dice)]


if __name__ == "__main__":
    # Command mode (the seed's `"run": "python3 main.py"`): input JSON on stdin,
    # result JSON on stdout, a non-zero exit on failure.
    import json

    try:
        print(json.dumps(handler(json.load(sys.stdin))))
    except ValueError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
