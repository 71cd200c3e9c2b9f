"""The bot's cogs (discord.py extensions), each loaded by ``MaesterBot.setup_hook``."""
