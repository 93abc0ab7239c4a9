"""Local exchange simulator: each venue's real WebSocket/REST protocol on loopback (DESIGN.md §6).

    from marketprism.sim import SimServer, SimConfig, Faults
    async with SimServer(SimConfig(mode="synthetic", symbols=["BTC-USDT"]), port=0) as sim:
        url = sim.ws_url("binance_spot")        # ws://127.0.0.1:PORT/binance_spot/stream
        sim.set_faults("binance_spot", Faults(drop_every_n=100))
        sim.truth()                              # what was sent, per venue / instrument / data type

Collectors reach it by changing base URLs only: ``sim.ws_base(venue)`` and ``sim.rest_base(venue)``.
"""

from marketprism.sim.config import (
    ALL_VENUES,
    Faults,
    SimConfig,
    parse_faults_arg,
    parse_replay_arg,
    parse_replay_args,
)
from marketprism.sim.okx import okx_checksum
from marketprism.sim.replay import read_recording
from marketprism.sim.server import SimServer, run_sim_forever

__all__ = [
    "ALL_VENUES",
    "Faults",
    "SimConfig",
    "SimServer",
    "okx_checksum",
    "parse_faults_arg",
    "parse_replay_arg",
    "parse_replay_args",
    "read_recording",
    "run_sim_forever",
]
