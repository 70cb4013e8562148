"""Target strings: parsing, error messages that point at the bad token, evaluation, early stop."""

import pytest
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph import build_graph
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import Term, parse_target

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = Net().eval()
    return m, build_graph(m, (8, 8), include_classes=True)


def test_parse_forms(setup):
    _, g = setup
    assert parse_target("loss", g).terms == [(1.0, Term("loss"))]
    assert parse_target("class:3", g).terms == [(1.0, Term("class", channel=3))]
    assert parse_target("class:Ankle boot", g, CLASSES).terms == [(1.0, Term("class", channel=9))]
    assert parse_target("class:T-shirt/top - class:Shirt", g, CLASSES).terms == [
        (1.0, Term("class", channel=0)), (-1.0, Term("class", channel=6))]
    t = parse_target("unit:c2:3 - 0.5*unit:c2:5 + 2e-1*neuron:c1:1:2:7", g)
    assert t.terms == [(1.0, Term("unit", "c2", 3)), (-0.5, Term("unit", "c2", 5)), (0.2, Term("neuron", "c1", 1, 2, 7))]
    assert parse_target("-unit:c1:0 * 3 + unit:c1:0", g).terms == [(-2.0, Term("unit", "c1", 0))]
    assert parse_target("unit:c2:3", g).stop_layer(g) == "c2"
    assert parse_target("unit:c2:3 + unit:c3:0", g).stop_layer(g) == "c3"
    assert parse_target("loss + unit:c1:0", g).stop_layer(g) is None


@pytest.mark.parametrize("text, pos, words", [
    ("unit:c9:1", 5, "unknown layer 'c9'"),
    ("unit:c2:6", 8, "6 channels"),
    ("neuron:c1:0:8:0", 12, "outside"),
    ("loss + bogus", 7, "unknown target 'bogus'"),
    ("0.5 unit:c1:0", 4, "expected '*'"),
    ("unit:c1:0 +", 11, "expected a term"),
    ("unit:c1:0 unit:c1:1", 10, "expected '+'"),
    ("class:Sneakers", 6, "unknown class"),
    ("__import__('os').system('true')", 0, "unknown target"),
    ("class:10", 6, "out of range"),
])
def test_errors_point_at_the_bad_token(setup, text, pos, words):
    _, g = setup
    with pytest.raises(ViscnnError) as e:
        parse_target(text, g, CLASSES)
    msg = str(e.value)
    assert words in msg
    assert f"position {pos}:" in msg
    caret_line = msg.splitlines()[-1]
    assert caret_line.index("^") - 2 == pos


def test_evaluate_matches_the_definitions(setup):
    m, g = setup
    x = torch.randn(5, 1, 8, 8)
    maps = {}
    hooks = [getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: maps.__setitem__(n, o.detach())) for n in ("c1", "c2")]
    logits = m(x).detach()
    for h in hooks:
        h.remove()
    t = parse_target("unit:c2:3 - 0.5*neuron:c1:1:2:7 + 2*class:4", g)
    v = t.evaluate(logits, maps)
    expect = maps["c2"][:, 3].mean((1, 2)) - 0.5 * maps["c1"][:, 1, 2, 7] + 2 * logits[:, 4]
    torch.testing.assert_close(v, expect)
    ce = parse_target("loss", g).evaluate(logits, maps)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits, logits.argmax(1), reduction="none"))
    lab = torch.tensor([1, 2, 3, 4, 5])
    torch.testing.assert_close(parse_target("loss", g).evaluate(logits, maps, lab),
                               torch.nn.functional.cross_entropy(logits, lab, reduction="none"))


def test_forward_stops_at_an_inner_target(setup):
    m, g = setup
    s = Scorer(m, g, "unit:c2:1", ["taylor"])
    cap = s.capture(torch.randn(2, 1, 8, 8))
    assert set(cap.outputs) == {"c1", "c2"} and cap.logits is None
    # the value is the real unit mean
    torch.testing.assert_close(cap.values, m.c2(torch.relu(m.c1(cap.x)))[:, 1].mean((1, 2)).detach())
