"""Print known_failures.txt lines for the tests a conformance run did not
pass, each with the last line of its error as the first-cut reason:

    MPC_CONFORMANCE_JSON=/tmp/run python -m pytest tests/conformance
    python tests/conformance/known_from_run.py /tmp/run.*.json

Review every line before adding it: a reason should say why, not only what.
"""
import json
import sys


def reason_of(detail):
    lines = [l.strip() for l in detail.strip().splitlines() if l.strip()]
    return (lines[-1] if lines else 'no detail')[:160]


def main(paths):
    for path in paths:
        method = path.rsplit('.', 2)[-2]
        with open(path) as f:
            result = json.load(f)
        for test_id, (outcome, detail) in sorted(result['outcomes'].items()):
            if outcome not in ('pass', 'skip'):
                print('%-10s %s  %s' % (method, test_id, reason_of(detail)))


if __name__ == '__main__':
    main(sys.argv[1:])
