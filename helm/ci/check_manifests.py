#!/usr/bin/env python3
"""Lint and render the serval-translator chart with every profile in helm/ci/ and check the
manifests: what each profile must produce, the probes, securityContext and exact capability
set of every container, the drain timing, the config checksum, the monitoring objects, the
router's state volume and router.state_file, and that the chart refuses the invalid profiles
and the misconfigurations it promises to refuse.

With SERVAL_TRANSLATOR_BIN set, every rendered policy also goes through
`serval-translator check-config --skip-files` with the container's environment (exit 0).

Run through .ci/helm-check (which provides helm); exits non-zero naming every failure.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HELM_DIR = Path(__file__).resolve().parent.parent
REPO = HELM_DIR.parent
CHART = HELM_DIR / "serval-translator"
CI = HELM_DIR / "ci"
RELEASE = "ci"
NAMESPACE = "serval"
FULL = f"{RELEASE}-serval-translator"
ADMIN_PORT = 9901
SERVAL_PORT = 54325
NONROOT_UID = 65532
PRESTOP = ["/serval-translator", "drain", "--wait"]
# roles.router.state: the volume's mount and the state_file the chart puts in the policy.
STATE_DIR = "/var/lib/serval"
STATE_FILE = f"{STATE_DIR}/router-state.json"
STATE_CLAIM = "serval-router-state"  # roles.router.state.existingClaim in router-state-pvc.yaml
# The first line of this form in a helm/ci/invalid/ file: refused by a template (this text in
# the error), not by the schema.
REFUSED_WITH = re.compile(r"^# refused-with: (.+)$", re.M)

# What each profile must render. workloads: role -> (kind, translator caps, init caps or None,
# hostNetwork). services: the Service names (without the release prefix). router_state: the
# router's state volume, "emptyDir" (the default) or "pvc" (roles.router.state.existingClaim).
PROFILES = {
    "default.yaml": {
        "workloads": {
            "router": ("Deployment", set(), None, False),
            "server": ("Deployment", set(), None, False),
            "client": ("Deployment", set(), None, False),
        },
        "services": {"router", "router-admin", "server-admin", "client-admin"},
        "secret": True,
        "monitoring": False,
    },
    "router-only.yaml": {
        "workloads": {"router": ("Deployment", set(), None, False)},
        "services": {"router", "router-admin"},
        "secret": True,
        "monitoring": False,
    },
    "router-state-pvc.yaml": {
        "workloads": {"router": ("Deployment", set(), None, False)},
        "services": {"router", "router-admin"},
        "secret": True,
        "monitoring": False,
        "router_state": "pvc",
    },
    "client-redirect-daemonset.yaml": {
        "workloads": {"client": ("DaemonSet", set(), {"NET_ADMIN"}, True)},
        "services": {"client-admin"},
        "secret": False,  # secrets.existingSecret
        "monitoring": False,
    },
    "client-tproxy.yaml": {
        "workloads": {
            "router": ("Deployment", set(), None, False),
            "client": ("DaemonSet", {"NET_ADMIN"}, None, True),
        },
        "services": {"router", "router-admin", "client-admin"},
        "secret": True,
        "monitoring": False,
    },
    "client-dns.yaml": {
        "workloads": {"client": ("Deployment", {"NET_BIND_SERVICE"}, None, False)},
        "services": {"client-admin", "client-dns"},
        "secret": True,
        "monitoring": False,
    },
    "monitoring.yaml": {
        "workloads": {
            "router": ("Deployment", set(), None, False),
            "server": ("Deployment", set(), None, False),
        },
        "services": {"router", "router-admin", "server-admin"},
        "secret": True,
        "monitoring": True,
    },
}

# Values the templates must refuse with a message containing the given text (beside
# helm/ci/invalid/: refused by the schema, or by a template with its `# refused-with:` text).
TEMPLATE_REFUSALS = [
    (["--set", "roles.router.policy.admin.listen=127.0.0.1:9901"], "managed by the chart"),
    (["--set", "roles.router.policy.drain.grace_period=90s"], "managed by the chart"),
    (["--set", "roles.router.terminationGracePeriodSeconds=5"], "must exceed drain.marginSeconds"),
    (["--set", "roles.router.enabled=false", "--set", "roles.server.enabled=true"], "no Serval router"),
    (["--set", "secrets.sharedKey=abc"], "sharedKey"),
    (["-f", str(CI / "client-tproxy.yaml"), "--set", "roles.client.interception=redirect"],
     "mode: tproxy"),
    (["-f", str(CI / "client-tproxy.yaml"), "--set", "roles.client.interception=none"],
     "mode: tproxy"),
    (["-f", str(CI / "default.yaml"), "--set", "roles.client.interception=tproxy"],
     "no listener"),
    (["--set", "roles.client.enabled=true", "--set", "roles.client.dns.enabled=true"],
     "client.dns"),
]

failures = []


def fail(profile, msg):
    failures.append(f"{profile}: {msg}")


def helm(*args, check=True):
    proc = subprocess.run(["helm", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(values_args):
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def duration_seconds(text):
    """A policy duration (250ms, 30s, 5m, 1h30m, 2d) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def index(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def check_security(profile, where, ctr, pod_sc, expect_caps):
    sc = ctr.get("securityContext") or {}
    if sc.get("privileged"):
        fail(profile, f"{where}: privileged")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(profile, f"{where}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(profile, f"{where}: allowPrivilegeEscalation is not false")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        fail(profile, f"{where}: capabilities.drop is {caps.get('drop')}, not [ALL]")
    got = set(caps.get("add") or [])
    if got != expect_caps:
        fail(profile, f"{where}: capabilities.add is {sorted(got)}, expected {sorted(expect_caps)}")
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    nonroot = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if expect_caps:
        # Kubernetes gives a non-root process no added capability (no ambient set), so a
        # container that needs one runs as uid 0 with only that one.
        if uid != 0:
            fail(profile, f"{where}: needs {sorted(expect_caps)}, so uid 0 expected, got {uid}")
    elif uid != NONROOT_UID or nonroot is not True:
        fail(profile, f"{where}: runAsNonRoot={nonroot} runAsUser={uid}, expected true/{NONROOT_UID}")


def check_policy_fields(profile, role, policy):
    if policy.get("admin", {}).get("listen") != f"0.0.0.0:{ADMIN_PORT}":
        fail(profile, f"{role} policy: admin.listen is {policy.get('admin')}")
    if policy.get("serval", {}).get("bind") != f"0.0.0.0:{SERVAL_PORT}":
        fail(profile, f"{role} policy: serval.bind is {policy.get('serval')}")
    if role not in policy:
        fail(profile, f"{role} policy: no {role}: section")


def container_env(ctr):
    """The container's literal environment, $(VAR) expanded as the kubelet would, with stand-ins
    for the pod IP and the router Service's variables (secret references left out:
    check-config --skip-files does not read key variables)."""
    known = {"POD_IP": "10.0.0.10"}
    env = {}
    for e in ctr.get("env") or []:
        if "value" not in e:
            if e["name"] in known:
                env[e["name"]] = known[e["name"]]
            continue

        def sub(m):
            var = m.group(1)
            if var in env:
                return env[var]
            if var.endswith("_SERVICE_HOST"):
                return "10.96.0.10"
            if var.endswith("_SERVICE_PORT_SERVAL"):
                return str(SERVAL_PORT)
            return m.group(0)

        env[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, e["value"])
    return env


def check_config(profile, role, policy_text, ctr):
    binary = os.environ.get("SERVAL_TRANSLATOR_BIN")
    if not binary:
        return False
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "policy.yaml"
        path.write_text(policy_text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **container_env(ctr)}
        proc = subprocess.run([binary, "check-config", "--skip-files", "--summary", str(path)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            fail(profile, f"{role} policy: check-config exit {proc.returncode}:\n"
                          f"{proc.stdout}{proc.stderr}\n--- policy ---\n{policy_text}")
    return True


def check_router_state(profile, deploy, policy, expect):
    """The router's state: expect is "emptyDir", "pvc" (roles.router.state.existingClaim) or
    None (roles.router.state.enabled false): the volume, its writable mount at STATE_DIR,
    router.state_file in the policy, and the strategy (Recreate only with the claim)."""
    where = "Deployment/router"
    spec = deploy["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    (ctr,) = [c for c in spec["containers"] if c["name"] == "translator"] or [{}]
    mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
    state_file = (policy.get("router") or {}).get("state_file")
    strategy = deploy["spec"].get("strategy") or {}
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    if expect is None:
        if "state" in vols or "state" in mounts:
            fail(profile, f"{where}: a state volume/mount although roles.router.state.enabled is false")
        if strategy.get("type") != "RollingUpdate":
            fail(profile, f"{where}: strategy {strategy}, expected RollingUpdate")
        return
    if state_file != STATE_FILE:
        fail(profile, f"{where}: router.state_file in the policy is {state_file!r}, expected {STATE_FILE}")
    mount = mounts.get("state") or {}
    if mount.get("mountPath") != STATE_DIR or mount.get("readOnly"):
        fail(profile, f"{where}: state volume mount {mount}, expected writable at {STATE_DIR} "
                      f"(the state file is written as a temp file + rename there)")
    vol = vols.get("state") or {}
    if expect == "emptyDir":
        if not (vol.get("emptyDir") or {}).get("sizeLimit"):
            fail(profile, f"{where}: state volume {vol}, expected an emptyDir with a sizeLimit")
        if strategy.get("type") != "RollingUpdate":
            fail(profile, f"{where}: strategy {strategy}, expected RollingUpdate with the emptyDir")
    else:
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim != STATE_CLAIM:
            fail(profile, f"{where}: state volume {vol}, expected persistentVolumeClaim {STATE_CLAIM}")
        if strategy != {"type": "Recreate"}:
            fail(profile, f"{where}: strategy {strategy}, expected Recreate with the state claim "
                          f"(one router on the ReadWriteOnce volume and the file at a time)")
        if deploy["spec"].get("replicas") not in (0, 1):
            fail(profile, f"{where}: {deploy['spec'].get('replicas')} replicas on one state claim")
        if fs_group != NONROOT_UID:
            fail(profile, f"{where}: fsGroup {fs_group}, expected {NONROOT_UID} (the non-root router writes the claim)")


def check_router_state_off():
    """roles.router.state.enabled false: no volume, and the policy's own router.state_file (if
    any) passes through untouched."""
    name = "state.enabled=false"
    off = ["--set", "roles.router.state.enabled=false"]
    for extra, want in (([], None), (["--set", "roles.router.policy.router.state_file=own/state.json"], "own/state.json")):
        objs = index(render(off + extra))
        policy = yaml.safe_load(objs[("ConfigMap", f"{FULL}-router")]["data"]["policy.yaml"])
        got = (policy.get("router") or {}).get("state_file")
        if got != want:
            fail(name, f"router.state_file is {got!r}, expected {want!r} (the user's policy, untouched)")
        check_router_state(name, objs[("Deployment", f"{FULL}-router")], policy, None)
    print(f"ok   {name}: no state volume, the policy's router.state_file left alone")


def check_profile(name, expect):
    values = ["-f", str(CI / name)]
    lint = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *values, check=False)
    if lint.returncode != 0:
        fail(name, f"helm lint failed:\n{lint.stdout}{lint.stderr}")
        return
    docs = render(values)
    objs = index(docs)
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], set()).add(d["metadata"]["name"])

    # Workloads: exactly the expected ones, of the expected kind.
    workloads = {k: v for k, v in objs.items() if k[0] in ("Deployment", "DaemonSet", "StatefulSet")}
    want = {(kind, f"{FULL}-{role}") for role, (kind, *_rest) in expect["workloads"].items()}
    if set(workloads) != want:
        fail(name, f"workloads {sorted(workloads)}, expected {sorted(want)}")

    # Services.
    services = kinds.get("Service", set())
    want_svc = {f"{FULL}-{s}" for s in expect["services"]}
    if services != want_svc:
        fail(name, f"Services {sorted(services)}, expected {sorted(want_svc)}")
    for svc_name in services:
        ports = {(p["name"], p["protocol"], p["port"]) for p in objs[("Service", svc_name)]["spec"]["ports"]}
        if svc_name.endswith("-router") and ("serval", "UDP", SERVAL_PORT) not in ports:
            fail(name, f"{svc_name}: no UDP serval port {SERVAL_PORT}: {ports}")
        if svc_name.endswith("-admin") and ports != {("admin", "TCP", ADMIN_PORT)}:
            fail(name, f"{svc_name}: ports {ports}, expected the admin port only")
        if svc_name.endswith("-client-dns") and ports != {("dns-udp", "UDP", 53), ("dns-tcp", "TCP", 53)}:
            fail(name, f"{svc_name}: ports {ports}, expected UDP and TCP 53")

    if (("Secret", f"{FULL}-keys") in objs) != expect["secret"]:
        fail(name, f"chart-created Secret present: {not expect['secret']}, expected {expect['secret']}")

    # Monitoring objects only where asked for.
    has_sm = "ServiceMonitor" in kinds
    dash = objs.get(("ConfigMap", f"{FULL}-dashboard"))
    if has_sm != expect["monitoring"] or (dash is not None) != expect["monitoring"]:
        fail(name, f"ServiceMonitor {has_sm}, dashboard {dash is not None}; expected {expect['monitoring']}")
    if has_sm:
        sm = objs[("ServiceMonitor", FULL)]
        if sm["apiVersion"] != "monitoring.coreos.com/v1" or [e["port"] for e in sm["spec"]["endpoints"]] != ["admin"]:
            fail(name, f"ServiceMonitor: {sm['apiVersion']} endpoints {sm['spec']['endpoints']}")
    if dash is not None:
        if dash["metadata"]["labels"].get("grafana_dashboard") != "1":
            fail(name, "dashboard ConfigMap: no grafana_dashboard: \"1\" label")
        try:
            board = json.loads(dash["data"]["serval-translator.json"])
            if not board.get("title"):
                fail(name, "dashboard JSON has no title")
        except (KeyError, ValueError) as e:
            fail(name, f"dashboard JSON does not parse: {e}")

    checked = 0
    for role, (kind, caps, init_caps, host_network) in expect["workloads"].items():
        w = objs.get((kind, f"{FULL}-{role}"))
        if w is None:
            continue
        where = f"{kind}/{role}"
        pod = w["spec"]["template"]
        spec = pod["spec"]
        pod_sc = spec.get("securityContext") or {}
        if bool(spec.get("hostNetwork")) != host_network:
            fail(name, f"{where}: hostNetwork {spec.get('hostNetwork')}, expected {host_network}")
        if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(name, f"{where}: seccompProfile is not RuntimeDefault")

        # The policy ConfigMap, mounted at /etc/serval, and its checksum on the pod.
        cm_name = f"{FULL}-{role}"
        cm = objs.get(("ConfigMap", cm_name))
        if cm is None:
            fail(name, f"{where}: no ConfigMap {cm_name}")
            continue
        policy_text = cm["data"]["policy.yaml"]
        policy = yaml.safe_load(policy_text)
        check_policy_fields(name, role, policy)
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        if role == "router":
            check_router_state(name, w, policy, expect.get("router_state", "emptyDir"))
        if (vols.get("policy", {}).get("configMap") or {}).get("name") != cm_name:
            fail(name, f"{where}: volume 'policy' is not ConfigMap {cm_name}")
        checksum = (pod["metadata"].get("annotations") or {}).get("checksum/config", "")
        if not re.fullmatch(r"[0-9a-f]{64}", checksum):
            fail(name, f"{where}: checksum/config annotation missing or malformed: {checksum!r}")

        # Drain timing: the grace period covers the policy's drain.
        tgps = spec.get("terminationGracePeriodSeconds")
        grace = duration_seconds(policy.get("drain", {}).get("grace_period", ""))
        if not isinstance(tgps, int) or tgps <= grace:
            fail(name, f"{where}: terminationGracePeriodSeconds {tgps} not above drain.grace_period {grace}s")

        containers = spec["containers"]
        if [c["name"] for c in containers] != ["translator"]:
            fail(name, f"{where}: containers {[c['name'] for c in containers]}")
        for ctr in containers:
            cw = f"{where}/{ctr['name']}"
            ports = {p["name"]: p for p in ctr.get("ports", [])}
            if ports.get("admin", {}).get("containerPort") != ADMIN_PORT:
                fail(name, f"{cw}: no admin port {ADMIN_PORT}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (ctr.get(probe) or {}).get("httpGet") or {}
                if get.get("path") != path or get.get("port") not in ("admin", ADMIN_PORT):
                    fail(name, f"{cw}: {probe} is {get}, expected GET {path} on the admin port")
            pre = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
            want_pre = PRESTOP + ["--timeout", policy.get("drain", {}).get("grace_period")]
            if pre != want_pre:
                fail(name, f"{cw}: preStop is {pre}, expected {want_pre} (the wait bounded by drain.grace_period)")
            env = {e["name"]: e.get("value") for e in ctr.get("env") or []}
            if env.get("SERVAL_ADMIN_LISTEN") != policy.get("admin", {}).get("listen"):
                fail(name, f"{cw}: SERVAL_ADMIN_LISTEN {env.get('SERVAL_ADMIN_LISTEN')} differs from the "
                           f"policy's admin.listen (the preStop drain reads the variable)")
            mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
            if mounts.get("policy", {}).get("mountPath") != "/etc/serval":
                fail(name, f"{cw}: policy not mounted at /etc/serval")
            if "--config" not in ctr.get("args", []) or "/etc/serval/policy.yaml" not in ctr.get("args", []):
                fail(name, f"{cw}: args {ctr.get('args')} do not run /etc/serval/policy.yaml")
            if not (ctr.get("resources") or {}).get("requests"):
                fail(name, f"{cw}: no resource requests")
            check_security(name, cw, ctr, pod_sc, caps)
            if check_config(name, role, policy_text, ctr):
                checked += 1
        inits = spec.get("initContainers") or []
        if init_caps is None and inits:
            fail(name, f"{where}: unexpected init containers {[c['name'] for c in inits]}")
        if init_caps is not None:
            if len(inits) != 1:
                fail(name, f"{where}: expected the interception-rules init container, got {len(inits)}")
            for ctr in inits:
                check_security(name, f"{where}/init/{ctr['name']}", ctr, pod_sc, init_caps)

        # A changed policy value must change the checksum (and so roll the pods), and only
        # for that role; the same values must give the same checksum.
        again = index(render(values))[(kind, f"{FULL}-{role}")]
        if again["spec"]["template"]["metadata"]["annotations"].get("checksum/config") != checksum:
            fail(name, f"{where}: checksum/config differs between two identical renders")
        changed = index(render(values + ["--set", f"roles.{role}.policy.log.level=debug"]))
        new_sum = changed[(kind, f"{FULL}-{role}")]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        if new_sum == checksum:
            fail(name, f"{where}: checksum/config unchanged after a policy change")
        new_policy = changed[("ConfigMap", cm_name)]["data"]["policy.yaml"]
        if hashlib.sha256(new_policy.encode()).hexdigest() == hashlib.sha256(policy_text.encode()).hexdigest():
            fail(name, f"{where}: the policy ConfigMap did not change with the policy value")
        for other, (okind, *_r) in expect["workloads"].items():
            if other != role:
                before = objs[(okind, f"{FULL}-{other}")]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                after = changed[(okind, f"{FULL}-{other}")]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                if before != after:
                    fail(name, f"{okind}/{other}: checksum changed with roles.{role}.policy")
    extra = f", check-config on {checked} policies" if checked else ""
    print(f"ok   {name}: {sorted((k, sorted(v)) for k, v in kinds.items())}{extra}")


def check_refusals():
    """Every helm/ci/invalid/ file is refused by values.schema.json, or, when it has a
    `# refused-with: TEXT` line, by a template with TEXT in the error (and not the schema)."""
    for path in sorted((CI / "invalid").glob("*.yaml")):
        name = f"invalid/{path.name}"
        expected = REFUSED_WITH.search(path.read_text())
        by = f"a template ({expected.group(1).strip()!r})" if expected else "values.schema.json"
        tmpl = helm("template", RELEASE, str(CHART), "-f", str(path), check=False)
        out = tmpl.stderr + tmpl.stdout
        # helm lint runs the schema but lets a template's `fail` pass (it logs it), so only
        # schema refusals are expected from lint.
        lint_rc = 1 if expected else helm("lint", str(CHART), "-f", str(path), check=False).returncode
        if lint_rc == 0 or tmpl.returncode == 0:
            fail(name, f"accepted (lint exit {lint_rc}, template exit {tmpl.returncode}); {by} must refuse it")
        elif expected and (expected.group(1).strip() not in tmpl.stderr or "schema" in out.lower()):
            fail(name, f"refused, but not by {by}:\n{tmpl.stderr}")
        elif not expected and "schema" not in out.lower():
            fail(name, f"refused, but not by the schema:\n{tmpl.stderr}")
        else:
            print(f"ok   {name}: refused by {by}")
    for args, text in TEMPLATE_REFUSALS:
        tmpl = helm("template", RELEASE, str(CHART), *args, check=False)
        if tmpl.returncode == 0 or text not in tmpl.stderr:
            fail(" ".join(args), f"expected a refusal mentioning {text!r}, got exit {tmpl.returncode}:\n{tmpl.stderr}")
        else:
            print(f"ok   refused {' '.join(args).replace(str(CI) + '/', '')}")


def check_versions():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = (REPO / "Cargo.toml").read_text()
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo, re.M | re.S)
    if chart.get("apiVersion") != "v2":
        fail("Chart.yaml", f"apiVersion {chart.get('apiVersion')}, expected v2")
    if not m or str(chart.get("appVersion")) != m.group(1):
        fail("Chart.yaml", f"appVersion {chart.get('appVersion')} != workspace version {m and m.group(1)}")
    else:
        print(f"ok   Chart.yaml: appVersion {m.group(1)} = workspace version")


def main():
    check_versions()
    missing = [p for p in PROFILES if not (CI / p).exists()]
    extra = [p.name for p in CI.glob("*.yaml") if p.name not in PROFILES]
    if missing or extra:
        fail("helm/ci", f"profiles without expectations {extra}, expectations without profiles {missing}")
    # The chart's own defaults (values.yaml alone) must lint and render: a router.
    lint = helm("lint", "--strict", str(CHART), check=False)
    if lint.returncode != 0:
        fail("values.yaml", f"helm lint of the defaults failed:\n{lint.stdout}{lint.stderr}")
    else:
        defaults = render([])
        kinds = sorted({(d["kind"], d["metadata"]["name"]) for d in defaults})
        if ("Deployment", f"{FULL}-router") not in kinds or any(k == "Deployment" and n != f"{FULL}-router" for k, n in kinds):
            fail("values.yaml", f"defaults should render the router only: {kinds}")
        else:
            objs = index(defaults)
            policy = yaml.safe_load(objs[("ConfigMap", f"{FULL}-router")]["data"]["policy.yaml"])
            before = len(failures)
            check_router_state("values.yaml", objs[("Deployment", f"{FULL}-router")], policy, "emptyDir")
            if len(failures) == before:
                print(f"ok   values.yaml defaults: router only, state on an emptyDir at {STATE_DIR}, "
                      f"router.state_file {STATE_FILE}")
    for name, expect in PROFILES.items():
        if (CI / name).exists():
            try:
                check_profile(name, expect)
            except RuntimeError as e:
                fail(name, str(e))
    try:
        check_router_state_off()
    except RuntimeError as e:
        fail("state.enabled=false", str(e))
    if not list((CI / "invalid").glob("*.yaml")):
        fail("helm/ci/invalid", "no invalid profile")
    check_refusals()
    if not os.environ.get("SERVAL_TRANSLATOR_BIN"):
        print("note: SERVAL_TRANSLATOR_BIN not set: rendered policies not run through check-config")
    if failures:
        print(f"\nFAILED: {len(failures)} problem(s)", file=sys.stderr)
        for f in failures:
            print(f"- {f}", file=sys.stderr)
        sys.exit(1)
    print("\nhelm chart: all checks passed")


if __name__ == "__main__":
    main()
