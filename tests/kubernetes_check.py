"""What the rendered Kubernetes objects promise each other and the config (run by
tests/kubernetes_check.sh with the kubernetes-validate venv's Python: PyYAML, tomllib).

    kubernetes_check.py DEPLOY_DIR RENDER_DIR

RENDER_DIR holds base.0.yaml and overlays-{nvidia,intel,monitoring}.0.yaml. Prints each
failure and exits 1 if there is any."""

import base64
import difflib
import os
import sys
import tomllib

import yaml

deploy, renders = sys.argv[1], sys.argv[2]
failures = []


def fail(where, what):
    failures.append(f"{where}: {what}")


def humantime_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(f"not a duration: {text!r}")


TIERS = {"live": "StatefulSet", "origin": "Deployment", "edge": "Deployment"}


def check(render, name):
    path = os.path.join(renders, f"{name}.0.yaml")
    if not os.path.exists(path):
        fail(name, "not rendered")
        return None
    objs = [o for o in yaml.safe_load_all(open(path)) if o]
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    kinds = lambda k: [o for o in objs if o["kind"] == k]  # noqa: E731

    # The config, through the ConfigMap every pod mounts.
    cms = [o for o in kinds("ConfigMap") if o["metadata"]["name"].startswith("rackcast-config-")]
    if len(cms) != 1:
        fail(name, f"{len(cms)} rackcast-config ConfigMaps (want 1, hash-suffixed)")
        return None
    cm = cms[0]
    config = tomllib.loads(cm["data"]["rackcast.toml"])
    cluster = config["cluster"]
    discovery = cluster["discovery"]
    drain = humantime_seconds(cluster["drain_grace"])
    secrets = [o for o in kinds("Secret") if o["metadata"]["name"].startswith("rackcast-secrets-")]
    if len(secrets) != 1:
        fail(name, f"{len(secrets)} rackcast-secrets Secrets (want 1, hash-suffixed)")
        return None
    secret = secrets[0]
    for key in secret["data"]:
        value = base64.b64decode(secret["data"][key]).decode().strip()
        if len(value) < 16:
            fail(name, f"secret {key} is {len(value)} characters (rackcast wants >= 16)")
    secret_files = [cluster.get("relay_secret_file"), config.get("auth", {}).get("publish_token_secret_file")]
    if None in secret_files:
        fail(name, "config lacks relay_secret_file or publish_token_secret_file")
    secret_dirs = {os.path.dirname(f) for f in secret_files if f}
    if {os.path.basename(f) for f in secret_files if f} != set(secret["data"]):
        fail(name, f"Secret keys {sorted(secret['data'])} are not the config's secret files {secret_files}")
    data_dir = config.get("auth", {}).get("data_dir")

    pod_labels = {}
    for tier, kind in TIERS.items():
        where = f"{name}: {kind} rackcast-{tier}"
        w = by.get((kind, f"rackcast-{tier}"))
        if not w:
            fail(name, f"no {kind} rackcast-{tier}")
            continue
        pod = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        pod_labels[tier] = labels
        if labels.get("app.kubernetes.io/component") != tier:
            fail(where, "pods are not labelled app.kubernetes.io/component: " + tier)
        # Discovery: the role's name is this tier's headless Service, which lists
        # not-ready pods and selects exactly this tier.
        host = discovery[tier]
        svc_name, ns = host.split(".")[0], host.split(".")[1]
        if host != f"{svc_name}.{ns}.svc.cluster.local" or ns != w["metadata"].get("namespace"):
            fail(where, f"discovery name {host} is not a Service in the workload's namespace")
        svc = by.get(("Service", svc_name))
        if not svc:
            fail(where, f"no Service {svc_name} for discovery")
        else:
            s = svc["spec"]
            if s.get("clusterIP") != "None" or s.get("publishNotReadyAddresses") is not True:
                fail(where, f"Service {svc_name} is not headless with publishNotReadyAddresses")
            if any(labels.get(k) != v for k, v in s["selector"].items()) or s["selector"].get("app.kubernetes.io/component") != tier:
                fail(where, f"Service {svc_name} does not select this tier only")
        if kind == "StatefulSet" and w["spec"].get("serviceName") != svc_name:
            fail(where, "serviceName is not the discovery Service")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            fail(where, f"terminationGracePeriodSeconds {grace} is not longer than drain_grace {drain}s")
        psc = pod.get("securityContext", {})
        if not (psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0 and psc.get("runAsGroup", 0) > 0
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            fail(where, f"pod securityContext is not restricted: {psc}")
        if (psc.get("runAsUser"), psc.get("runAsGroup")) != (10001, 10001):
            fail(where, "uid/gid is not the image's 10001:10001")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        if tier == "live" and "data" not in claims:
            fail(where, "no volumeClaimTemplate data")
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            csc = c.get("securityContext", {})
            if not (csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True
                    and csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc.get("capabilities", {}).get("add")):
                fail(cw, f"container securityContext is not restricted: {csc}")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if ports.get("http") != discovery["http_port"] or ports.get("rtmp") != discovery["rtmp_port"]:
                fail(cw, f"ports {ports} are not discovery's http_port/rtmp_port")
            probes = {p: c.get(p, {}).get("httpGet", {}) for p in ("startupProbe", "livenessProbe", "readinessProbe")}
            want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/ready"}
            for p, path in want.items():
                if probes[p].get("path") != path or probes[p].get("port") not in ("http", discovery["http_port"]):
                    fail(cw, f"{p} is not GET {path} on the HTTP port: {probes[p]}")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            if "/tmp" not in mounts or "emptyDir" not in volumes.get(mounts["/tmp"]["name"], {}):
                fail(cw, "no emptyDir at /tmp")
            if data_dir not in mounts or (mounts[data_dir]["name"] not in claims and "emptyDir" not in volumes.get(mounts[data_dir]["name"], {})):
                fail(cw, f"auth.data_dir {data_dir} is not a volume")
            if tier == "live" and mounts.get(data_dir, {}).get("name") not in claims:
                fail(cw, "live data_dir is not on the PersistentVolumeClaim")
            conf = mounts.get("/etc/rackcast/rackcast.toml")
            if not conf or volumes.get(conf["name"], {}).get("configMap", {}).get("name") != cm["metadata"]["name"]:
                fail(cw, "/etc/rackcast/rackcast.toml is not the generated ConfigMap")
            if c.get("args", [])[:3] != ["run", "--config", "/etc/rackcast/rackcast.toml"]:
                fail(cw, f"args {c.get('args')} do not run with the mounted config")
            if c.get("args", [])[3:] != ["--role", tier]:
                fail(cw, f"args do not give the role {tier}")
            for d in secret_dirs:
                m = mounts.get(d)
                if not m or volumes.get(m["name"], {}).get("secret", {}).get("secretName") != secret["metadata"]["name"]:
                    fail(cw, f"{d} is not the generated Secret")
            res = c.get("resources", {})
            for k in ("cpu", "memory"):
                if k not in res.get("requests", {}) or k not in res.get("limits", {}):
                    fail(cw, f"no {k} request and limit")
            gpus = {k for k in res.get("limits", {}) if "gpu" in k or "i915" in k}
            want_gpu = {"nvidia": {"nvidia.com/gpu"}, "intel": {"gpu.intel.com/i915"}}.get(render, set()) if tier == "live" else set()
            if gpus != want_gpu:
                fail(cw, f"GPU resources {sorted(gpus)}, want {sorted(want_gpu)}")
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if tier == "live" and render == "nvidia" and env.get("NVIDIA_DRIVER_CAPABILITIES") != "compute,video,utility":
                fail(cw, "NVIDIA_DRIVER_CAPABILITIES is not compute,video,utility")
        if not any(o["kind"] == "PodDisruptionBudget" and o["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == tier for o in objs):
            fail(where, "no PodDisruptionBudget")
        if tier in ("origin", "edge"):
            hpa = by.get(("HorizontalPodAutoscaler", f"rackcast-{tier}"))
            if not hpa or hpa["apiVersion"] != "autoscaling/v2" or hpa["spec"]["scaleTargetRef"]["name"] != f"rackcast-{tier}" \
                    or not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]):
                fail(where, "no autoscaling/v2 CPU HorizontalPodAutoscaler")
            if "replicas" in w["spec"]:
                fail(where, "sets replicas, which its autoscaler owns")

    rtmp = by.get(("Service", "rackcast-rtmp"), {}).get("spec", {})
    if rtmp.get("type") != "LoadBalancer" or rtmp.get("externalTrafficPolicy") != "Local" or rtmp.get("selector", {}).get("app.kubernetes.io/component") != "live":
        fail(name, "rackcast-rtmp is not a LoadBalancer with externalTrafficPolicy Local to the live pods")
    viewers = by.get(("Service", "rackcast-viewers"), {}).get("spec", {})
    if viewers.get("selector", {}).get("app.kubernetes.io/component") != "edge" or [p["port"] for p in viewers.get("ports", [])] != [8080]:
        fail(name, "rackcast-viewers does not serve the edges on 8080")

    backends = config["transcode"]["backends"]
    first = {"base": "software", "nvidia": "nvenc", "intel": "vaapi", "monitoring": "software"}[render]
    if backends[0] != first or backends[-1] != "software":
        fail(name, f"transcode.backends {backends}: want {first} first, software last")

    if render == "monitoring":
        pms = kinds("PodMonitor")
        if len(pms) != 1 or pms[0]["apiVersion"] != "monitoring.coreos.com/v1":
            fail(name, "not one monitoring.coreos.com/v1 PodMonitor")
        else:
            spec = pms[0]["spec"]
            sel = spec["selector"]["matchLabels"]
            for tier, labels in pod_labels.items():
                if any(labels.get(k) != v for k, v in sel.items()):
                    fail(name, f"PodMonitor does not select the {tier} pods")
            eps = spec.get("podMetricsEndpoints", [])
            if [(e.get("port"), e.get("path")) for e in eps] != [("http", "/metrics")]:
                fail(name, f"PodMonitor endpoints {eps}: want port http, path /metrics")
            allowed = {"selector", "podMetricsEndpoints", "podTargetLabels", "namespaceSelector", "jobLabel"}
            if set(spec) - allowed:
                fail(name, f"PodMonitor spec has fields this check does not know: {set(spec) - allowed}")
        dash = by.get(("ConfigMap", "rackcast-grafana-dashboard"))
        if not dash or dash["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            fail(name, "no ConfigMap rackcast-grafana-dashboard labelled grafana_dashboard: \"1\"")
        elif list(dash["data"].values()) != [open(os.path.join(deploy, "monitoring/grafana-dashboard.json")).read()]:
            fail(name, "the dashboard ConfigMap is not deploy/monitoring/grafana-dashboard.json")
    elif kinds("PodMonitor"):
        fail(name, "has a PodMonitor (only the monitoring overlay needs the CRD)")
    return config


for render, name in [("base", "base"), ("nvidia", "overlays-nvidia"), ("intel", "overlays-intel"), ("monitoring", "overlays-monitoring")]:
    check(render, name)

# The GPU overlays' configs are the base's with the backends line changed, nothing else.
# (tests/it/shipped_configs.rs starts each of them as a node.)
base_toml = open(os.path.join(deploy, "kubernetes/base/rackcast.toml")).read().splitlines()
for overlay in ("nvidia", "intel"):
    other = open(os.path.join(deploy, f"kubernetes/overlays/{overlay}/rackcast.toml")).read().splitlines()
    changed = [l for l in difflib.unified_diff(base_toml, other, lineterm="", n=0) if l[:1] in "+-" and l[:3] not in ("+++", "---")]
    if len(changed) != 2 or not all(l[1:].startswith("backends = ") for l in changed):
        fail(f"overlays/{overlay}/rackcast.toml", f"differs from base/rackcast.toml beyond the backends line: {changed}")

for f in failures:
    print(f"kubernetes_check.py: FAIL: {f}", file=sys.stderr)
sys.exit(1 if failures else 0)
