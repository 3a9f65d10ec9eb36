"""Slurm hostlist expressions: expand as Slurm reads them, compress as scontrol writes them."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainwarden.policies import hostlist
from trainwarden.policies.hostlist import MAX_NAMES, compress, expand, natural_key
from trainwarden.supervisor.scheduler import slurm_parse as sp

# --- expand ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        # the examples of Slurm's own documentation (scontrol(1), slurm_hostlist_create(3),
        # Slurm::Hostlist(3pm))
        ("linux[1-3,6]", ("linux1", "linux2", "linux3", "linux6")),
        ("tux[0-3,12]", ("tux0", "tux1", "tux2", "tux3", "tux12")),
        ("node1,node[2-5,12]", ("node1", "node2", "node3", "node4", "node5", "node12")),
        ("lx[10-12]", ("lx10", "lx11", "lx12")),
        # plain names, lists, single numbers in brackets
        ("n1", ("n1",)),
        ("login1,login2", ("login1", "login2")),
        ("n[5]", ("n5",)),
        ("nid[000001-000004,000010]", tuple(f"nid{i:06d}" for i in (1, 2, 3, 4, 10))),
        ("n1,n2,n[5-8]", ("n1", "n2", "n5", "n6", "n7", "n8")),
        # whitespace separates items too, as in Slurm
        ("n1 n2\tn3, n4", ("n1", "n2", "n3", "n4")),
        ("  n1  ", ("n1",)),
        ("", ()),
        ("   ", ()),
        # text after the last bracket (Slurm refuses it; read here)
        ("nid[001-002]-ib,login1", ("nid001-ib", "nid002-ib", "login1")),
        # a name with no digits, digits only
        ("[1-2]", ("1", "2")),
    ],
)
def test_expand(text: str, names: tuple[str, ...]) -> None:
    assert expand(text) == names


@pytest.mark.parametrize(
    ("text", "names"),
    [
        # the width of the lower bound sets the padding, as in Slurm (range->width = strlen(lo))
        ("n[01-10]", tuple(f"n{i:02d}" for i in range(1, 11))),
        ("n[1-10]", tuple(f"n{i}" for i in range(1, 11))),
        ("n[8-12]", ("n8", "n9", "n10", "n11", "n12")),
        ("n[001-5]", ("n001", "n002", "n003", "n004", "n005")),
        ("n[098-101]", ("n098", "n099", "n100", "n101")),
        ("n[0-1]", ("n0", "n1")),
        ("n[00-01]", ("n00", "n01")),
        # each range in a bracket keeps its own width
        ("n[01-02,5,007]", ("n01", "n02", "n5", "n007")),
    ],
)
def test_zero_padding_follows_the_lower_bound(text: str, names: tuple[str, ...]) -> None:
    assert expand(text) == names


def test_several_brackets_are_the_product_in_slurms_order() -> None:
    assert expand("rack[1-2]-node[01-03]") == (
        "rack1-node01",
        "rack1-node02",
        "rack1-node03",
        "rack2-node01",
        "rack2-node02",
        "rack2-node03",
    )
    assert expand("r[1-2]n[1-2]") == ("r1n1", "r1n2", "r2n1", "r2n2")
    # three or more: the last bracket fastest, the ones before it nested right to left
    # (scontrol show hostnames 'a[1-2]b[1-2]c[1-2]', Slurm 22.05)
    assert expand("a[1-2]b[1-2]c[1-2]") == (
        "a1b1c1",
        "a1b1c2",
        "a2b1c1",
        "a2b1c2",
        "a1b2c1",
        "a1b2c2",
        "a2b2c1",
        "a2b2c2",
    )
    assert expand("a[1,3]b[0-1]c[7]") == ("a1b0c7", "a3b0c7", "a1b1c7", "a3b1c7")
    assert len(expand("r[00-15]c[0-7]n[00-31]")) == 16 * 8 * 32


def test_duplicates_dropped_keeping_first_place_or_kept_as_scontrol_does() -> None:
    assert expand("n[1-3],n2,n[3-4]") == ("n1", "n2", "n3", "n4")
    assert expand("n3,n1,n3") == ("n3", "n1")
    assert expand("n[1-2,2]") == ("n1", "n2")
    # scontrol show hostnames keeps repeats (it never calls hostlist_uniq)
    assert expand("n[1-3],n2,n[3-4]", unique=False) == ("n1", "n2", "n3", "n2", "n3", "n4")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("n[1-3", r"unbalanced '\[' in hostlist 'n\[1-3': a '\]' is missing"),
        ("n1-3]", r"unbalanced '\]' at position 4 in hostlist 'n1-3\]'"),
        ("n[1-2]]", r"unbalanced '\]'"),
        ("n[[1-2]]", r"nested '\['"),
        ("n[3-1]", r"descending range '3-1' in 'n\[3-1\]'.*lower bound first"),
        ("n[010-9]", r"descending range '010-9'"),
        ("n1,,n2", r"empty item in hostlist 'n1,,n2' \(two commas in a row\?\)"),
        (",n1", r"empty item .*leading comma"),
        ("n1,", r"empty item .*trailing comma"),
        ("n[]", r"empty brackets in 'n\[\]'"),
        ("n[1,,2]", r"empty range in 'n\[1,,2\]'"),
        ("n[a-b]", r"cannot read range 'a-b' in 'n\[a-b\]'.*a number or LO-HI"),
        ("n[1-]", r"cannot read range '1-'"),
        ("n[-3]", r"cannot read range '-3'"),
        ("n[1-2-3]", r"cannot read range '1-2-3'"),
        ("n[1 - 3]", r"cannot read range '1 - 3'"),
        ("n[x]", r"cannot read range 'x'"),
    ],
)
def test_errors_say_what_is_wrong(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand(bad)


def test_a_typo_cannot_allocate_gigabytes() -> None:
    assert MAX_NAMES == 1_000_000
    assert len(expand("n[0000000-0999999]")) == MAX_NAMES  # exactly the bound is fine
    for bad in (
        "n[0-1000000]",  # one over
        "n[0-99999999999999]",  # one huge range: refused before any allocation
        "a[0-999]b[0-9999]",  # a product of modest ranges
        "n[0-999999],m[0-1]",  # the total over all items counts
    ):
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=r"stands for more than 1,000,000 names"):
            expand(bad)
        assert time.perf_counter() - t0 < 0.5


def test_the_error_quotes_a_long_expression_shortened() -> None:
    text = ",".join(f"node{i}" for i in range(100)) + ",n[2-1]"
    with pytest.raises(ValueError) as exc:
        expand(text)
    assert "..." in str(exc.value) and len(str(exc.value)) < 200


def test_twenty_thousand_nodes_expand_fast() -> None:
    names = expand("nid[000000-019999]")
    assert len(names) == 20_000 and len(set(names)) == 20_000
    assert names[0] == "nid000000" and names[-1] == "nid019999" and names[1234] == "nid001234"
    best = min(_timed(lambda: expand("nid[000000-019999]")) for _ in range(5))
    assert best < 0.05, f"{best * 1000:.1f} ms"


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- compress ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "text"),
    [
        ([], ""),
        (["n1"], "n1"),
        (["n3", "n1", "n2", "n5"], "n[1-3,5]"),
        (["n1", "n1", "n2"], "n[1-2]"),
        ([f"nid{i:06d}" for i in range(20_000)], "nid[000000-019999]"),
        (["nid000001", "nid000002", "nid000003", "nid000007"], "nid[000001-000003,000007]"),
        (["login1", "nid002", "nid001", "login"], "login,login1,nid[001-002]"),
        # widths: n9,n10 is one unpadded range; n09,n10 one of width 2; n9 and n010 cannot merge
        (["n9", "n10", "n11"], "n[9-11]"),
        (["n09", "n10"], "n[09-10]"),
        (["n9", "n010"], "n[9,010]"),
        (["n99", "n100"], "n[99-100]"),
        # prefixes in natural order: rack2 before rack10
        (["rack10-n1", "rack2-n1", "rack2-n2"], "rack2-n[1-2],rack10-n1"),
        (["a-ib", "a"], "a,a-ib"),
    ],
)
def test_compress(names: list[str], text: str) -> None:
    assert compress(names) == text


@pytest.mark.parametrize("bad", ["", "n[1]", "a,b", "a b"])
def test_compress_refuses_what_no_hostlist_can_carry(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be written in a hostlist"):
        compress(["n1", bad])


def _random_names(rng: random.Random) -> list[str]:
    prefixes = ["nid", "n", "gpu-a", "rack1-node", "rack10-node", "login", "x2y"]
    out = []
    for _ in range(rng.randint(0, 60)):
        prefix = rng.choice(prefixes)
        kind = rng.random()
        n = rng.randint(0, 130)
        if kind < 0.1:
            out.append(prefix)  # no numeric suffix
        elif kind < 0.5:
            out.append(f"{prefix}{n}")  # unpadded
        else:
            out.append(f"{prefix}{n:0{rng.choice((2, 3, 6))}d}")  # zero padded
    return out


def test_round_trip_on_random_sets() -> None:
    rng = random.Random(20240611)
    for _ in range(500):
        names = _random_names(rng)
        text = compress(names)
        assert expand(text) == tuple(sorted(set(names), key=natural_key)), text
        assert expand(text, unique=False) == expand(text)  # compress writes no repeats


def test_round_trip_of_expanded_expressions() -> None:
    for text in ("nid[000000-019999]", "n[1-3,5],gpu[08-11]", "r[1-2]n[01-16]", "n[8-12]"):
        names = expand(text)
        assert set(expand(compress(names))) == set(names)
    assert compress(expand("n[1-3,5],gpu[08-11]")) == "gpu[08-11],n[1-3,5]"


def test_compress_twenty_thousand_with_holes_is_quick() -> None:
    names = [f"nid{i:06d}" for i in range(20_000) if i % 97]
    t0 = time.perf_counter()
    text = compress(names)
    assert time.perf_counter() - t0 < 1.0
    assert text.startswith("nid[000001-000096,000098-")
    assert expand(text) == tuple(names)


def test_slurm_parse_keeps_using_it() -> None:
    assert sp.expand_hostlist("n[1-2],n2") == ("n1", "n2", "n2")  # Slurm's sequence
    assert sp.expand_hostlist("(null)") == ()
    assert hostlist.expand("n[1-2],n2") == ("n1", "n2")


# --- against Slurm itself ----------------------------------------------------------------------

SCONTROL = shutil.which("scontrol") or (
    "/usr/bin/scontrol" if Path("/usr/bin/scontrol").exists() else None
)
# expressions Slurm reads (it refuses text after the last bracket, which expand accepts)
SLURM_EXPRESSIONS = [
    "n1",
    "linux[1-3,6]",
    "nid[000001-000004,000010]",
    "n[8-12]",
    "n[001-5]",
    "n[01-02,5,007]",
    "rack[1-2]-node[01-03]",
    "r[00-03]c[0-1]n[00-02]",
    "n[1-3],n2,n[3-4]",
    "login1,n[1-2] gpu[08-11]",
    "a[1-2]b[1-2]c[1-2]d[1-2]",
]


def _scontrol(tmp_path: Path, *argv: str) -> str:
    """``scontrol show ...`` run offline: a minimal slurm.conf, no controller needed."""
    assert SCONTROL is not None
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=tw\nSlurmctldHost=localhost\nNodeName=n1\nPartitionName=p Nodes=n1\n"
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    done = subprocess.run(
        [SCONTROL, "show", *argv], capture_output=True, text=True, timeout=30, env=env
    )
    if done.returncode != 0 or not done.stdout:
        pytest.skip(f"scontrol show {argv[0]} does not work here: {done.stderr.strip()[:200]}")
    return done.stdout


@pytest.mark.skipif(SCONTROL is None, reason="scontrol is not installed")
@pytest.mark.parametrize("text", SLURM_EXPRESSIONS)
def test_expand_matches_scontrol_show_hostnames(tmp_path: Path, text: str) -> None:
    slurm = tuple(_scontrol(tmp_path, "hostnames", text).split())
    assert expand(text, unique=False) == slurm
    assert expand(text) == tuple(dict.fromkeys(slurm))


@pytest.mark.skipif(SCONTROL is None, reason="scontrol is not installed")
@pytest.mark.parametrize(
    "names",
    [
        ["n3", "n1", "n2", "n5"],
        ["nid000007", "nid000001", "nid000002", "nid000003"],
        ["login1", "nid002", "nid001", "gpu10", "gpu09"],
        ["rack10-n1", "rack2-n1", "rack2-n2"],
        ["n9", "n10", "n11", "n99", "n100"],
        [f"nid{i:06d}" for i in range(0, 300) if i % 7],
    ],
)
def test_compress_matches_scontrol_show_hostlistsorted(tmp_path: Path, names: list[str]) -> None:
    # the same text for sets without repeats (Slurm keeps repeats; compress drops them)
    assert compress(names) == _scontrol(tmp_path, "hostlistsorted", ",".join(names)).strip()


@pytest.mark.skipif(SCONTROL is None, reason="scontrol is not installed")
@pytest.mark.parametrize(
    "bad", ["n[3-1]", "n[a-b]", "n[1,,2]", "n[]", "n[-3]", "n[1-2-3]", "n[[1]]"]
)
def test_what_slurm_refuses_expand_refuses(tmp_path: Path, bad: str) -> None:
    assert SCONTROL is not None
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=tw\nSlurmctldHost=localhost\n")
    done = subprocess.run(
        [SCONTROL, "show", "hostnames", bad],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SLURM_CONF": str(conf)},
    )
    if "configuration source" in done.stderr:
        pytest.skip("scontrol cannot run offline here")
    assert "Invalid hostlist" in done.stdout + done.stderr
    with pytest.raises(ValueError):
        expand(bad)
