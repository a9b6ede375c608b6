"""Steps of the rollout stage; their logic lives in visionzero/rollout/."""

from steps.rollout.deployer import deployer
from steps.rollout.discord_alert import discord_alert

__all__ = ["deployer", "discord_alert"]
