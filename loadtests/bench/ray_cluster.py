"""A local Ray cluster serving deploy/ray/serve.yaml from this process, for the Ray tests and benchmarks.

`make serve-ray` runs Ray's own `serve run deploy/ray/serve.yaml`. The tests and the failover and overhead
benchmarks need more than that command gives: a free port, a fixed replica count, other artifacts, and the driver
in this process, so that they can kill a replica's actor or hold a DeploymentHandle. So this module reads the same
file, applies those overrides, and deploys it as `serve run` does:

    with RayServe.start(replicas=2, port=free_port(), env={"RANK_BUNDLE_DIR": ...}) as ray_serve:
        ...  # ray_serve.url, ray_serve.replicas(), ray_serve.kill(name), ray_serve.handle()

Needs the `ray` extra.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from loadtests.process import wait_ready
from training.paths import ROOT

CONFIG = ROOT / "deploy/ray/serve.yaml"


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    """The Serve config file as a dict (its one application and one deployment are what this module deploys)."""
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def with_overrides(
    config: dict[str, Any], replicas: int | None, env: dict[str, str], user_config: dict[str, str] | None
) -> dict[str, Any]:
    """The config with `env` over its application's env_vars, a fixed replica count instead of autoscaling (when
    `replicas`), and a `user_config` (when given)."""
    config = copy.deepcopy(config)
    application = config["applications"][0]
    runtime_env = application.setdefault("runtime_env", {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
    deployment = application["deployments"][0]
    if replicas is not None:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = replicas
    if user_config is not None:
        deployment["user_config"] = user_config
    return config


@dataclass
class RayServe:
    """The application of deploy/ray/serve.yaml on a local Ray started by this process."""

    url: str
    app_name: str
    deployment_name: str
    config: dict[str, Any]
    env: dict[str, str]
    replica_count: int | None

    @classmethod
    def start(
        cls,
        *,
        port: int,
        replicas: int | None = None,
        env: dict[str, str] | None = None,
        num_cpus: int | None = None,
        timeout: float = 180.0,
    ) -> RayServe:
        """Start Ray (all this machine's CPUs unless `num_cpus`), Serve's proxy on 127.0.0.1:`port`, and the
        application; return once /health/ready answers 200 through the proxy."""
        config = load_config()
        # Ray starts its workers (the replicas, the proxy) at nice 15, below the raylet. On a node that runs only
        # Ray that costs nothing; here the load generator and the plain service it is compared with run at nice 0
        # on the same 2 cores, so the replicas would lose every contended time slice to them.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        application = config["applications"][0]
        self = cls(
            url=f"http://127.0.0.1:{port}",
            app_name=application["name"],
            deployment_name=application["deployments"][0]["name"],
            config=config,
            env=env or {},
            replica_count=replicas,
        )
        self.deploy()
        wait_ready(self.url, timeout=timeout, name="Ray Serve")
        return self

    def deploy(self, user_config: dict[str, str] | None = None) -> None:
        """Deploy the config as `serve deploy` does, and wait until it runs. Redeploying with only a new
        `user_config` is Serve's in-place update: every replica's `reconfigure` runs, none restarts. (Serve's
        Python API, `serve.run`, would restart them all: it treats every call as new code.)"""
        config = with_overrides(self.config, self.replica_count, self.env, user_config)
        # The client `serve deploy` and `serve run` use (Ray-internal; Ray is pinned at 2.60.0 in pyproject.toml).
        from ray.serve.context import _get_global_client

        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)

    def replicas(self) -> list[str]:
        """Names of the live replica actors (`SERVE_REPLICA::<app>#<deployment>#<id>`)."""
        prefix = f"SERVE_REPLICA::{self.app_name}#{self.deployment_name}#"
        named = ray.util.list_named_actors(all_namespaces=True)  # from the GCS: needs no dashboard
        return sorted(a["name"] for a in named if a["namespace"] == "serve" and a["name"].startswith(prefix))

    def kill(self, actor_name: str) -> None:
        """Kill one replica's actor at once (no graceful shutdown, no restart): what a crashed node does."""
        ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)

    def wait_replicas(self, count: int, timeout: float = 120.0, without: str | None = None) -> list[str]:
        """Wait until `count` replicas are running (none named `without`) and return their names."""
        deadline = time.monotonic() + timeout
        while True:
            names = [n for n in self.replicas() if n != without]
            status = serve.status().applications[self.app_name].deployments[self.deployment_name]
            running = status.replica_states.get("RUNNING", 0)
            if len(names) >= count and running >= count:
                return names
            if time.monotonic() > deadline:
                raise TimeoutError(f"{running} of {count} replicas running after {timeout:.0f}s")
            time.sleep(0.25)

    def handle(self) -> DeploymentHandle:
        return serve.get_deployment_handle(self.deployment_name, app_name=self.app_name)

    def stop(self) -> None:
        serve.shutdown()
        ray.shutdown()

    def __enter__(self) -> RayServe:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def replica_id(actor_name: str) -> str:
    """The id an actor name ends with, which the X-Replica header carries."""
    return actor_name.rsplit("#", 1)[-1]
