"""Pure unit tests (no root, no LXC): sizes, the state table, cgroup settings of a plan,
plan validation, names and the configuration loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpshost import config as config_mod
from vpshost.errors import Conflict, UsageError
from vpshost.host import cgroups
from vpshost.host.cgroups import Layout
from vpshost.models import Plan, check_name
from vpshost.states import OPERATIONS, TRANSIENT, State, check
from vpshost.units import format_mb, parse_size_mb

# -- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "mb"), [
    ("256M", 256), ("1G", 1024), ("1.5G", 1536), ("2T", 2 * 1024 * 1024),
    ("1024K", 1), ("1536K", 1), ("256", 256), ("256MB", 256), ("256MiB", 256),
    ("1gib", 1024), (" 1G ", 1024), ("0", 0), ("0M", 0), ("4 G", 4096),
])
def test_parse_size(text: str, mb: int) -> None:
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("text", ["12X", "-1G", "", "G", "1.2.3", "1e3M", "0x10M", "1 G B",
                                  "--1", "1GG", "M1"])
def test_malformed_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="is not a size") as info:
        parse_size_mb(text, "--memory")
    assert "--memory" in info.value.message and info.value.hint
    assert info.value.exit_code == 2


def test_size_limits() -> None:
    with pytest.raises(UsageError, match="smaller than 1 MiB"):
        parse_size_mb("512K")
    with pytest.raises(UsageError, match="more than 0"):
        parse_size_mb("0", allow_zero=False)
    with pytest.raises(UsageError, match="more than 0"):
        parse_size_mb(-5)
    assert parse_size_mb(300) == 300


@given(n=st.integers(0, 10**6), unit=st.sampled_from(["K", "M", "G", "k", "m", "g", ""]),
       suffix=st.sampled_from(["", "B", "iB", "b"]))
def test_parse_size_matches_the_unit_arithmetic(n: int, unit: str, suffix: str) -> None:
    text = f"{n}{unit}{suffix if unit else ''}"
    kib = n * {"K": 1, "M": 1024, "G": 1024**2, "": 1024}[unit.upper()]
    if 0 < kib < 1024:
        with pytest.raises(UsageError):
            parse_size_mb(text)
    else:
        assert parse_size_mb(text) == kib // 1024


@given(mb=st.integers(1, 10**7))
def test_format_then_parse_round_trips(mb: int) -> None:
    text = format_mb(mb)
    assert re.fullmatch(r"\d+(\.\d+)?[MG]", text)
    back = parse_size_mb(text)
    if mb < 1024 or mb % 1024 == 0:
        assert back == mb
    else:  # two decimals of a GiB at most: within 1% of a GiB
        assert abs(back - mb) <= 11


def test_format_examples() -> None:
    assert [format_mb(m) for m in (256, 1024, 1536, 2048, 1000)] == [
        "256M", "1G", "1.5G", "2G", "1000M"]


# -- states -----------------------------------------------------------------------------

@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_state_table_allows_exactly_its_states(op: str) -> None:
    allowed, transient, final = OPERATIONS[op]
    for state in State:
        if state in allowed:
            assert check(op, state, "web") == (transient, final)
        else:
            with pytest.raises(Conflict) as info:
                check(op, state, "web")
            err = info.value
            assert f"cannot {op} 'web'" in err.message and f"it is {state}" in err.message
            assert err.exit_code == 2 and err.http_status == 409
            if state in TRANSIENT:
                assert "in progress" in err.hint


def test_state_table_shape() -> None:
    for op, (allowed, transient, _final) in OPERATIONS.items():
        assert allowed, op
        assert transient is None or transient in TRANSIENT, op
        assert not (allowed & TRANSIENT), f"{op} may start from a transient state"
    # the operations a user most often gets wrong say what to do
    with pytest.raises(Conflict) as info:
        check("delete", State.RUNNING, "web")
    assert "vps stop" in info.value.hint
    with pytest.raises(Conflict) as info:
        check("exec", State.STOPPED, "web")
    assert "vps start" in info.value.hint
    with pytest.raises(ValueError):
        check("start", "no-such-state", "web")


# -- cgroup settings --------------------------------------------------------------------

plans = st.builds(
    Plan, vcpus=st.integers(1, 64), memory_mb=st.integers(16, 1 << 20),
    swap_mb=st.integers(0, 1 << 16), disk_mb=st.integers(16, 1 << 20),
    cpu_cap_pct=st.integers(0, 6400), cpu_weight=st.integers(1, 10000),
    max_procs=st.one_of(st.just(0), st.integers(8, 1 << 20)))


@settings(max_examples=200)
@given(plan=plans, index=st.integers(0, (1 << 24) - 1), host_cpus=st.integers(1, 128),
       swap=st.booleans())
def test_v1_settings_enforce_the_plan(plan: Plan, index: int, host_cpus: int,
                                      swap: bool) -> None:
    s = cgroups.plan_settings(plan, index, Layout.V1, swap=swap, host_cpus=host_cpus)
    mem = plan.memory_mb * 1024 * 1024
    assert s["memory.limit_in_bytes"] == str(mem)
    if swap:
        assert s["memory.memsw.limit_in_bytes"] == str(mem + plan.swap_mb * 1024 * 1024)
    else:
        assert "memory.memsw.limit_in_bytes" not in s
    assert s["cpu.cfs_period_us"] == "100000"
    assert s["cpu.cfs_quota_us"] == (str(plan.cpu_cap_pct * 1000) if plan.cpu_cap_pct
                                     else "-1")
    assert int(s["cpu.shares"]) == max(2, plan.cpu_weight * 1024 // 100)
    assert s["pids.max"] == (str(plan.max_procs) if plan.max_procs else "max")
    cpus = [int(c) for c in s["cpuset.cpus"].split(",")]
    assert len(cpus) == len(set(cpus)) == min(plan.vcpus, host_cpus)
    assert all(0 <= c < host_cpus for c in cpus) and cpus == sorted(cpus)
    assert index % host_cpus in cpus  # rotation starts at the guest's slot
    assert all(re.fullmatch(r"-?\d+|max|[\d,]+", v) for v in s.values())


@settings(max_examples=200)
@given(plan=plans, index=st.integers(0, 1000), host_cpus=st.integers(1, 128))
def test_v2_settings_enforce_the_plan(plan: Plan, index: int, host_cpus: int) -> None:
    s = cgroups.plan_settings(plan, index, Layout.V2, host_cpus=host_cpus)
    assert s["memory.max"] == str(plan.memory_mb * 1024 * 1024)
    assert s["memory.swap.max"] == str(plan.swap_mb * 1024 * 1024)
    assert s["cpu.weight"] == str(plan.cpu_weight)
    quota, period = s["cpu.max"].split()
    assert period == "100000"
    assert quota == (str(plan.cpu_cap_pct * 1000) if plan.cpu_cap_pct else "max")
    assert s["pids.max"] == (str(plan.max_procs) if plan.max_procs else "max")
    assert not any(k.startswith(("cpu.cfs", "memory.limit", "cpu.shares")) for k in s)


def test_hybrid_uses_the_v1_files() -> None:
    plan = Plan(cpu_cap_pct=50)
    assert cgroups.plan_settings(plan, 0, Layout.HYBRID, host_cpus=2) == \
        cgroups.plan_settings(plan, 0, Layout.V1, host_cpus=2)
    keys = cgroups.lxc_keys({"pids.max": "32"}, Layout.HYBRID)
    assert keys == ["lxc.cgroup.pids.max = 32"]
    assert cgroups.lxc_keys({"pids.max": "32"}, Layout.V2) == ["lxc.cgroup2.pids.max = 32"]


def test_io_settings() -> None:
    plan = Plan(io_read_bps=10 << 20, io_write_iops=300)
    v2 = cgroups.io_settings(plan, "7:3", Layout.V2)
    assert v2 == {"io.max": f"7:3 rbps={10 << 20} wbps=max riops=max wiops=300"}
    v1 = cgroups.io_settings(plan, "7:3", Layout.V1)
    assert v1 == {"blkio.throttle.read_bps_device": f"7:3 {10 << 20}",
                  "blkio.throttle.write_bps_device": "7:3 0",
                  "blkio.throttle.read_iops_device": "7:3 0",
                  "blkio.throttle.write_iops_device": "7:3 300"}


@given(bps=st.integers(0, 1 << 40), iops=st.integers(0, 1 << 20),
       major=st.integers(0, 511), minor=st.integers(0, 1 << 20))
def test_io_settings_v2_property(bps: int, iops: int, major: int, minor: int) -> None:
    dev = f"{major}:{minor}"
    line = cgroups.io_settings(Plan(io_write_bps=bps, io_read_iops=iops), dev,
                               Layout.V2)["io.max"]
    parts = dict(p.split("=") for p in line.split()[1:])
    assert line.split()[0] == dev
    assert parts["wbps"] == (str(bps) if bps else "max")
    assert parts["riops"] == (str(iops) if iops else "max")


def test_layout_and_swap_accounting_detection(tmp_path: Path) -> None:
    assert cgroups.layout(tmp_path) is Layout.V1
    assert cgroups.swap_accounting(tmp_path) is False
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.memsw.limit_in_bytes").write_text("0")
    assert cgroups.swap_accounting(tmp_path) is True
    (tmp_path / "unified").mkdir()
    assert cgroups.layout(tmp_path) is Layout.HYBRID
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids")
    assert cgroups.layout(v2) is Layout.V2
    assert cgroups.swap_accounting(v2) is True


def test_cpuset_for_spreads_guests() -> None:
    assert cgroups.cpuset_for(0, 1, 4) == "0"
    assert cgroups.cpuset_for(5, 1, 4) == "1"
    assert cgroups.cpuset_for(3, 2, 4) == "0,3"
    assert cgroups.cpuset_for(7, 8, 4) == "0,1,2,3"


# -- plans and names --------------------------------------------------------------------

def test_default_plan_is_valid() -> None:
    assert Plan().validate() == Plan()


@pytest.mark.parametrize(("changes", "problem"), [
    ({"vcpus": 0}, "vcpus must be at least 1"),
    ({"memory_mb": 15}, "memory must be at least 16M"),
    ({"disk_mb": 8}, "disk must be at least 16M"),
    ({"swap_mb": -1}, "swap cannot be negative"),
    ({"cpu_cap_pct": -1}, "cpu cap"),
    ({"cpu_weight": 0}, "cpu weight"),
    ({"cpu_weight": 10001}, "cpu weight"),
    ({"io_read_bps": -1}, "io_read_bps cannot be negative"),
    ({"bandwidth_mbit": -1}, "bandwidth_mbit cannot be negative"),
    ({"max_procs": 4}, "max processes"),
    ({"max_procs": -1}, "max_procs cannot be negative"),
])
def test_invalid_plans(changes: dict[str, int], problem: str) -> None:
    with pytest.raises(UsageError, match="invalid plan") as info:
        Plan(**changes).validate()
    assert problem in info.value.message


def test_all_plan_problems_are_reported_at_once() -> None:
    with pytest.raises(UsageError) as info:
        Plan(vcpus=0, memory_mb=1, disk_mb=1).validate()
    assert info.value.message.count(";") == 2


@given(plan=plans)
def test_generated_plans_validate(plan: Plan) -> None:
    assert plan.validate() is plan


@pytest.mark.parametrize("name", ["ab", "web1", "web-1", "a" * 32, "x9-y8-z7"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "A1", "1ab", "-ab", "ab-", "a--b", "a_b", "a.b",
                                  "a b", "a" * 33, "ab\n", "ümlaut", "web/1"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid name") as info:
        check_name(name)
    assert "lower-case" in info.value.hint


@given(st.text(alphabet="abcz09-_A.", min_size=0, max_size=40))
def test_name_rule(name: str) -> None:
    expected = (2 <= len(name) <= 32 and name[0] in "abcz" and name[-1] in "abcz09"
                and set(name) <= set("abcz09-") and "--" not in name)
    try:
        check_name(name)
        ok = True
    except UsageError:
        ok = False
    assert ok is expected, name


# -- configuration ------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No VPS_* variables from the caller (the container tests set some)."""
    for var in [*config_mod._ENV, "VPS_CONFIG"]:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_defaults_without_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = config_mod.load(tmp_path / "absent.toml")
    assert cfg.state_dir == Path("/var/lib/vpshost")
    assert cfg.network.subnet == "10.88.0.0/16" and cfg.network.bridge_prefix == "vpsbr"
    assert cfg.database_url == "sqlite:////var/lib/vpshost/vpshost.db"
    assert cfg.guests_dir == Path("/var/lib/vpshost/guests")
    assert cfg.images_dir == Path("/var/cache/vpshost/images")


def test_file_then_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('state_dir = "/srv/vps"\n[network]\nsubnet = "10.9.0.0/16"\n'
                 'segment_prefixlen = 24\nnat = false\n[container]\nstop_timeout = 3\n')
    cfg = config_mod.load(f)
    assert cfg.state_dir == Path("/srv/vps") and isinstance(cfg.state_dir, Path)
    assert cfg.network.subnet == "10.9.0.0/16" and cfg.network.segment_prefixlen == 24
    assert cfg.network.nat is False
    assert cfg.container.stop_timeout == 3.0
    assert cfg.database_url == "sqlite:////srv/vps/vpshost.db"

    clean_env.setenv("VPS_SUBNET", "10.7.0.0/16")
    clean_env.setenv("VPS_STATE_DIR", "/tmp/elsewhere")
    clean_env.setenv("VPS_NAT_TABLE", "mytable")
    clean_env.setenv("VPS_BRIDGE_PREFIX", "brx")
    clean_env.setenv("VPS_CACHE_DIR", "/tmp/cache")
    clean_env.setenv("VPS_DB_URL", "sqlite:////tmp/x.db")
    cfg = config_mod.load(f)
    assert cfg.network.subnet == "10.7.0.0/16"  # the environment wins over the file
    assert cfg.network.segment_prefixlen == 24  # the file still counts where unset
    assert cfg.state_dir == Path("/tmp/elsewhere")
    assert (cfg.network.nft_table, cfg.network.bridge_prefix) == ("mytable", "brx")
    assert cfg.images_dir == Path("/tmp/cache/images")
    assert cfg.database_url == "sqlite:////tmp/x.db"


@pytest.mark.parametrize(("word", "value"), [("false", False), ("0", False), ("no", False),
                                             ("true", True), ("on", True), ("YES", True)])
def test_switches_from_strings_read_the_word(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                             word: str, value: bool) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'[network]\nnat = "{word}"\n')
    assert config_mod.load(f).network.nat is value  # bool("false") would be True


def test_config_file_from_vps_config(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[server]\nurl = "http://127.0.0.1:9"\n')
    clean_env.setenv("VPS_CONFIG", str(f))
    assert config_mod.load().server.url == "http://127.0.0.1:9"


@pytest.mark.parametrize(("text", "needle"), [
    ("bogus = 1\n", "unknown setting 'bogus'"),
    ("[network]\nbogus = 1\n", "unknown setting 'network.bogus'"),
    ("network = 5\n", "must be a [section]"),
    ("[network\n", "not valid TOML"),
    ("[network]\nnat = \"maybe\"\n", "'network.nat' = 'maybe' is not a valid bool"),
    ("[container]\nstop_timeout = \"soon\"\n", "'container.stop_timeout' = 'soon'"),
])
def test_bad_config_files(clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str,
                          needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=re.escape(needle)):
        config_mod.load(f)
