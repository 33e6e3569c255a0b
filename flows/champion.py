"""Flows `watch-champion` and `roll-out-champion`: every move of @champion, however made, is rolled out.

`watch-champion` polls the alias (the source of truth: MLflow webhooks are lost on a server restart);
the MLflow webhook receiver (`python -m flows.champion --port N`, started by `mlstack up`) notices a
move at once. Either records it and emits `mlstack.model.promoted`, which triggers `roll-out-champion`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import Event, Resource, emit_event
from prefect.events.clients import get_events_client

from mlstack.monitoring.steps import event_resource
from mlstack.settings import get_settings
from mlstack.stack import registry_events
from mlstack.stack.rollout import roll_out_if_needed
from mlstack.training import registry
from mlstack.training.champion_history import ChampionMove

step = task(cache_policy=NO_CACHE)


def announce_move(move: ChampionMove) -> None:
    """Emit `mlstack.model.promoted` for `move` (resource: the model version now @champion), in a flow run."""
    emit_event(
        event=registry_events.PROMOTED_EVENT,
        resource=event_resource(get_settings(), move.version),
        payload=move.payload(),
    )


def send_move_event(move: ChampionMove) -> None:
    """Send `mlstack.model.promoted` for `move` and return once it is sent (the webhook receiver's announce).

    Not `emit_event`: its background worker sends later, and a receiver stopped meanwhile loses the event.
    """
    event = Event(
        event=registry_events.PROMOTED_EVENT,
        resource=Resource(event_resource(get_settings(), move.version)),
        payload=move.payload(),
    )

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())


@step
def observe_champion() -> ChampionMove | None:
    return registry.observe_champion(get_settings(), "poll", announce_move)


@flow(name="watch-champion")
def watch_champion_flow() -> str | None:
    """Record and announce a move of @champion not yet announced; returns the version announced, if any."""
    move = observe_champion()
    if move is None:
        return None
    get_run_logger().info("@champion is now version %s (%s by %s): announced", move.version, move.kind, move.by)
    return move.version


@step
def roll_out_champion() -> str:
    rollout = roll_out_if_needed(get_settings())
    return rollout.summary() if rollout is not None else "the local service already serves the champion"


@flow(name="roll-out-champion")
def roll_out_champion_flow(version: str = "", reason: str = "") -> str:
    """Build the @champion's bento and roll the local service and the k8s overlay onto it (skipped if done).

    Parameters:
        version: the version the triggering event named (informational: the alias is read again).
        reason: why, from the event.
    """
    get_run_logger().info("rolling out @champion (event: version %s, %s)", version or "?", reason or "no reason")
    summary = roll_out_champion()
    get_run_logger().info(summary)
    return summary


def main() -> None:
    """Serve the MLflow webhook receiver on 127.0.0.1 (the process `mlstack up` starts)."""
    parser = argparse.ArgumentParser(description="MLflow webhook receiver: @champion moves to Prefect events")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mlflow-url", required=True, help="the MLflow server whose webhook is pointed here")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlstack").setLevel(logging.INFO)  # each delivery and what became of it, in its log
    settings = get_settings()
    secret = registry_events.webhook_secret(settings)
    server = registry_events.make_server(settings, secret, send_move_event, arguments.port)
    receiver_url = f"http://127.0.0.1:{arguments.port}{registry_events.WEBHOOK_PATH}"
    registry_events.register_webhook(arguments.mlflow_url, receiver_url, secret)  # once listening: no lost delivery
    server.serve_forever()


if __name__ == "__main__":
    main()
