#!/usr/bin/env python3
"""Offline validation of deploy/ (no cluster needed; none can be reached from CI).

  tests/manifests/validate.py --sandbox target/debug/openshell-sandbox

Checks, each printed with its result, ending with "N passed, N failed[, N skipped]":
  1. every Kubernetes object in deploy/kubernetes and deploy/openshift passes
     `kubernetes-validate --strict` (misspelt fields are errors: kube play and the API server
     would drop them silently, and a dropped `capabilities:` runs the pod without its settings);
  2. both kustomizations list exactly the files of their directory;
  3. the SCC validates against OpenShift's CRD schema (../shared/schemas/openshift-scc.crd.yaml,
     with additionalProperties: false at the top level so a misspelt field fails), and a
     misspelt copy is rejected; skipped, saying so, when the schema is not there;
  4. the SCC admits the shipped pod, allows nothing the pod does not use (capabilities,
     volume types), and rejects each of a list of pods that ask for one thing more;
  5. image references are pinned by tag and digest, never :latest, and the init container
     pins the supervisor's digest;
  6. the ConfigMap's policy passes `openshell-sandbox check`.
"""

import argparse
import copy
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "kubernetes"
OCP_DIR = REPO / "deploy" / "openshift"
SCC_SCHEMA = REPO.parent / "shared" / "schemas" / "openshift-scc.crd.yaml"
# Kinds kubernetes-validate has no schema for; each is validated its own way below.
NOT_KUBERNETES = {"Kustomization", "SecurityContextConstraints"}


class Report:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def check(self, what, problems):
        """problems: empty (pass) or a list of strings saying what is wrong."""
        if problems:
            self.failed += 1
            print(f"  FAIL  {what}")
            for p in problems:
                print(f"          | {p}")
        else:
            self.passed += 1
            print(f"  ok    {what}")

    def skip(self, what, why):
        self.skipped += 1
        print(f"  skip  {what}: {why}")

    def close(self):
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        print(line)
        return 1 if self.failed else 0


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(path):
    docs = load_docs(path)
    if len(docs) != 1:
        sys.exit(f"validate: {path}: expected one object, found {len(docs)}")
    return docs[0]


def manifests():
    files = sorted(K8S_DIR.glob("*.yaml")) + sorted(OCP_DIR.glob("*.yaml"))
    return {f: one(f) for f in files}


# --- 1. kubernetes-validate -------------------------------------------------------------

def kubernetes_validate(report, objs):
    tool = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    for path, obj in objs.items():
        if obj.get("kind") in NOT_KUBERNETES:
            continue
        run = subprocess.run([str(tool), "--strict", str(path)], capture_output=True, text=True)
        out = (run.stdout + run.stderr).strip()
        # A missing schema is only a warning (exit 0) to the tool, and would pass anything.
        bad = run.returncode != 0 or "WARN" in out or "passed" not in out
        report.check(f"kubernetes-validate --strict {path.relative_to(REPO)}",
                     out.splitlines() if bad else [])


# --- 2. kustomizations ------------------------------------------------------------------

def kustomizations(report, objs):
    for directory in (K8S_DIR, OCP_DIR):
        k = objs[directory / "kustomization.yaml"]
        listed = k.get("resources", [])
        problems = [f"{r} does not exist" for r in listed if not (directory / r).exists()]
        files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        problems += [f"{f} is not listed in resources" for f in sorted(files - set(listed))]
        report.check(f"{directory.relative_to(REPO)}/kustomization.yaml lists every manifest",
                     problems)


# --- 3. SCC schema ----------------------------------------------------------------------

def openapi_to_jsonschema(node):
    """OpenAPI's `nullable: true` is not JSON Schema; say it the JSON Schema way."""
    if isinstance(node, dict):
        node = {k: openapi_to_jsonschema(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [openapi_to_jsonschema(v) for v in node]
    return node


def scc_schema_errors(schema, scc):
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in validator.iter_errors(scc)]


def scc_schema(report, scc):
    what = "SCC validates against the OpenShift CRD schema"
    if not SCC_SCHEMA.exists():
        report.skip(what, f"{SCC_SCHEMA} not found (it is in the project's shared/ directory, "
                          "next to the repository, which a clone of the repository alone lacks)")
        return
    crd = one(SCC_SCHEMA)
    versions = [v for v in crd["spec"]["versions"] if v["name"] == scc["apiVersion"].split("/")[1]]
    if len(versions) != 1:
        report.check(what, [f"the CRD has no version {scc['apiVersion']}"])
        return
    schema = openapi_to_jsonschema(versions[0]["schema"]["openAPIV3Schema"])
    # The API server prunes unknown fields silently; here they are errors.
    schema["additionalProperties"] = False
    report.check(what, scc_schema_errors(schema, scc))
    misspelt = copy.deepcopy(scc)
    misspelt["allowHostNetwrok"] = misspelt.pop("allowHostNetwork")
    report.check("the schema check rejects an SCC with a misspelt field",
                 [] if scc_schema_errors(schema, misspelt) else ["a misspelt SCC passed"])


# --- 4. pod versus SCC ------------------------------------------------------------------

SECCOMP_NAMES = {"RuntimeDefault": "runtime/default", "Unconfined": "unconfined"}


def containers(spec):
    return [c for key in ("initContainers", "containers", "ephemeralContainers")
            for c in spec.get(key, [])]


def volume_type(volume):
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if len(kinds) == 1 else f"<invalid volume {volume.get('name')}>"


def seccomp_name(profile):
    if profile["type"] == "Localhost":
        return f"localhost/{profile.get('localhostProfile', '')}"
    return SECCOMP_NAMES.get(profile["type"], profile["type"])


def in_ranges(value, ranges):
    return any(r["min"] <= value <= r["max"] for r in ranges)


def violations(pod, scc):
    """What `pod` asks for that `scc` does not allow, as SCC admission would judge it (the
    checks of openshift/apiserver-library-go's SCC providers, for the fields used here).
    A value the pod leaves unset is defaulted by the SCC and so always admitted."""
    out = []
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    for field, allowed in (("hostNetwork", "allowHostNetwork"), ("hostPID", "allowHostPID"),
                           ("hostIPC", "allowHostIPC")):
        if spec.get(field) and not scc.get(allowed):
            out.append(f"pod: {field} is not allowed")
    if scc.get("userNamespaceLevel") == "RequirePodLevel" and spec.get("hostUsers") is not False:
        out.append("pod: hostUsers must be false")

    kinds = set(scc.get("volumes") or [])
    for v in spec.get("volumes", []):
        t = volume_type(v)
        if "*" not in kinds and t not in kinds:
            out.append(f"volume {v['name']}: type {t} is not allowed")
        if t == "hostPath" and not scc.get("allowHostDirVolumePlugin"):
            out.append(f"volume {v['name']}: hostPath is not allowed")

    forbidden = scc.get("forbiddenSysctls") or []
    for s in psc.get("sysctls", []):
        name = s["name"]
        if "*" in forbidden or name in forbidden or any(
                f.endswith("*") and name.startswith(f[:-1]) for f in forbidden):
            out.append(f"pod: sysctl {name} is forbidden")

    for field, strategy in (("fsGroup", "fsGroup"), ("supplementalGroups", "supplementalGroups")):
        strat = scc.get(strategy, {})
        values = psc.get(field)
        if values is None or strat.get("type") in (None, "RunAsAny"):
            continue
        values = values if isinstance(values, list) else [values]
        ranges = strat.get("ranges")
        if not ranges:
            out.append(f"pod: {field} {values} cannot be checked offline (the SCC takes the "
                       "namespace's range); leave it unset")
        elif not all(in_ranges(v, ranges) for v in values):
            out.append(f"pod: {field} {values} is outside {ranges}")

    allowed_seccomp = scc.get("seccompProfiles") or []
    for c in [{"name": "(pod)", "securityContext": psc}] + containers(spec):
        profile = c.get("securityContext", {}).get("seccompProfile")
        if profile and allowed_seccomp and "*" not in allowed_seccomp \
                and seccomp_name(profile) not in allowed_seccomp:
            out.append(f"{c['name']}: seccomp profile {seccomp_name(profile)} is not allowed")

    allowed_caps = set(scc.get("allowedCapabilities") or []) | set(
        scc.get("defaultAddCapabilities") or [])
    required_drop = scc.get("requiredDropCapabilities") or []
    run_as = scc.get("runAsUser", {})
    selinux = scc.get("seLinuxContext", {})
    for c in containers(spec):
        name = c["name"]
        sc = c.get("securityContext", {})
        if sc.get("privileged") and not scc.get("allowPrivilegedContainer"):
            out.append(f"{name}: privileged is not allowed")
        if sc.get("allowPrivilegeEscalation") and scc.get("allowPrivilegeEscalation") is False:
            out.append(f"{name}: allowPrivilegeEscalation is not allowed")
        if scc.get("readOnlyRootFilesystem") and sc.get("readOnlyRootFilesystem") is False:
            out.append(f"{name}: a writable root filesystem is not allowed")
        caps = sc.get("capabilities")
        if caps is None and required_drop:
            out.append(f"{name}: must drop {required_drop}")
        caps = caps or {}
        if "ALL" not in allowed_caps:
            out += [f"{name}: capability {cap} is not allowed"
                    for cap in caps.get("add", []) if cap not in allowed_caps]
        out += [f"{name}: must drop {cap}"
                for cap in required_drop if cap not in caps.get("drop", [])]
        for port in c.get("ports", []):
            if port.get("hostPort") and not scc.get("allowHostPorts"):
                out.append(f"{name}: hostPort {port['hostPort']} is not allowed")

        uid = sc.get("runAsUser", psc.get("runAsUser"))
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        kind = run_as.get("type")
        if kind == "MustRunAs" and uid is not None and uid != run_as.get("uid"):
            out.append(f"{name}: runAsUser {uid} is not {run_as.get('uid')}")
        elif kind == "MustRunAsNonRoot" and (uid == 0 or non_root is False):
            out.append(f"{name}: must run as non-root")
        elif kind == "MustRunAsRange" and uid is not None:
            low, high = run_as.get("uidRangeMin"), run_as.get("uidRangeMax")
            if low is None or high is None:
                out.append(f"{name}: runAsUser {uid} cannot be checked offline (the SCC takes "
                           "the namespace's range); leave it unset")
            elif not low <= uid <= high:
                out.append(f"{name}: runAsUser {uid} is outside {low}-{high}")

        if selinux.get("type") == "MustRunAs":
            wanted = selinux.get("seLinuxOptions", {})
            asked = {**psc.get("seLinuxOptions", {}), **sc.get("seLinuxOptions", {})}
            out += [f"{name}: seLinuxOptions.{k} {asked[k]!r} is not {v!r}"
                    for k, v in wanted.items() if k in asked and asked[k] != v]
    return out


def mutations():
    """Pods that each ask for one thing more than the shipped one: the SCC must reject each."""
    def agent(pod):
        return [c for c in pod["spec"]["containers"] if c["name"] == "agent"][0]

    def init(pod):
        return pod["spec"]["initContainers"][0]

    def add_cap(get, cap):
        return lambda p: get(p)["securityContext"]["capabilities"].setdefault("add", []).append(cap)

    def set_sc(get, key, value):
        return lambda p: get(p)["securityContext"].__setitem__(key, value)

    def set_spec(key, value):
        return lambda p: p["spec"].__setitem__(key, value)

    def add_volume(volume):
        return lambda p: p["spec"]["volumes"].append(volume)

    return [
        ("adds one more capability (NET_RAW) to the agent", add_cap(agent, "NET_RAW")),
        ("adds a capability (CHOWN) to the init container", add_cap(init, "CHOWN")),
        ("adds SYSLOG (upstream's list; not used here)", add_cap(agent, "SYSLOG")),
        ("does not drop ALL", lambda p: agent(p)["securityContext"]["capabilities"]
         .__setitem__("drop", ["NET_RAW"])),
        ("is privileged", set_sc(agent, "privileged", True)),
        ("allows privilege escalation", set_sc(agent, "allowPrivilegeEscalation", True)),
        ("runs the agent container as uid 1000", set_sc(agent, "runAsUser", 1000)),
        ("uses the spc_t SELinux type", set_sc(agent, "seLinuxOptions", {"type": "spc_t"})),
        ("is seccomp Unconfined", set_sc(agent, "seccompProfile", {"type": "Unconfined"})),
        ("uses the host network", set_spec("hostNetwork", True)),
        ("uses the host PID namespace", set_spec("hostPID", True)),
        ("uses the host IPC namespace", set_spec("hostIPC", True)),
        ("mounts a hostPath", add_volume({"name": "host", "hostPath": {"path": "/"}})),
        ("mounts a secret", add_volume({"name": "s", "secret": {"secretName": "s"}})),
        ("mounts a projected token", add_volume({"name": "t", "projected": {"sources": []}})),
        ("binds a host port", lambda p: agent(p).setdefault("ports", []).append(
            {"containerPort": 8080, "hostPort": 8080})),
        ("sets a sysctl", lambda p: p["spec"]["securityContext"].setdefault("sysctls", []).append(
            {"name": "net.ipv4.ping_group_range", "value": "0 0"})),
    ]


def pod_versus_scc(report, pod, scc):
    report.check("the SCC admits the shipped pod", violations(pod, scc))
    added = {cap for c in containers(pod["spec"])
             for cap in c.get("securityContext", {}).get("capabilities", {}).get("add", [])}
    allowed = set(scc.get("allowedCapabilities") or [])
    report.check(f"the SCC allows exactly the capabilities the pod adds ({', '.join(sorted(added))})",
                 [] if allowed == added else [f"allowed {sorted(allowed)}, added {sorted(added)}"])
    used = {volume_type(v) for v in pod["spec"].get("volumes", [])}
    kinds = set(scc.get("volumes") or [])
    report.check(f"the SCC allows exactly the volume types the pod uses ({', '.join(sorted(used))})",
                 [] if kinds == used else [f"allowed {sorted(kinds)}, used {sorted(used)}"])
    fixed = {"allowPrivilegedContainer": False, "allowPrivilegeEscalation": False,
             "allowHostDirVolumePlugin": False, "allowHostNetwork": False, "allowHostPID": False,
             "allowHostIPC": False, "allowHostPorts": False, "requiredDropCapabilities": ["ALL"]}
    report.check("the SCC is not privileged, grants no host access, drops ALL",
                 [f"{k}: {scc.get(k)!r}, want {v!r}" for k, v in fixed.items() if scc.get(k) != v])
    for what, mutate in mutations():
        mutated = copy.deepcopy(pod)
        mutate(mutated)
        report.check(f"the SCC rejects a pod that {what}",
                     [] if violations(mutated, scc) else ["admitted"])


# --- 5. pinning -------------------------------------------------------------------------

def pinning(report, pod):
    problems = []
    for c in containers(pod["spec"]):
        image = c["image"]
        name, _, digest = image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        if not digest.startswith("sha256:"):
            problems.append(f"{c['name']}: {image} is not pinned by digest")
        if not tag or tag == "latest":
            problems.append(f"{c['name']}: {image} has no version tag")
    report.check("every image is pinned by version tag and digest, none is :latest", problems)
    init = pod["spec"]["initContainers"][0]
    pins = [e for e in init.get("env", []) if e["name"] == "OPENSHELL_SUPERVISOR_SHA256"]
    report.check("the init container pins the supervisor's SHA-256",
                 [] if len(pins) == 1 and pins[0].get("value") else ["no pin"])
    mounts = [m for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])
              if m["name"] == "supervisor-bin"]
    report.check("the agent container mounts the supervisor read-only",
                 [] if mounts and all(m.get("readOnly") for m in mounts) else [str(mounts)])


# --- 6. the ConfigMap's policy -----------------------------------------------------------

def configmap_policy(report, configmap, sandbox):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(configmap["data"]["policy.yaml"])
        f.flush()
        run = subprocess.run([sandbox, "check", "--policy", f.name, "--workdir", "/tmp"],
                             capture_output=True, text=True)
    report.check("the ConfigMap's policy passes openshell-sandbox check",
                 [] if run.returncode == 0 else (run.stdout + run.stderr).splitlines())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sandbox", required=True, help="an openshell-sandbox binary (for check)")
    a = p.parse_args()
    report = Report()
    objs = manifests()
    print("== Kubernetes objects")
    kubernetes_validate(report, objs)
    kustomizations(report, objs)
    print("== OpenShift SCC")
    scc = objs[OCP_DIR / "scc.yaml"]
    scc_schema(report, scc)
    pod = objs[K8S_DIR / "pod.yaml"]
    pod_versus_scc(report, pod, scc)
    print("== the pod")
    pinning(report, pod)
    configmap_policy(report, objs[K8S_DIR / "configmap.yaml"], a.sandbox)
    return report.close()


if __name__ == "__main__":
    sys.exit(main())
