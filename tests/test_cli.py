"""The `vgg` command line."""

import json
import subprocess
import sys

from vggnet.cli import main


def test_params_json(capsys):
    assert main(["params", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["arch"]: r for r in rows}
    assert by["C"]["params"] == 133_638_952
    assert by["D"]["params"] == 138_357_544
    assert abs(by["D"]["gflops"] - 30.94) < 0.01
    assert {"A", "A-LRN", "B", "C", "D", "E", "D-BN"} <= set(by)
    assert by["E"]["weight_layers"] == 19


def test_params_table_via_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "vggnet", "params"], capture_output=True, text=True, check=True)
    assert "| D | vgg16 | 16 | 138,357,544 | 138M |" in out.stdout
