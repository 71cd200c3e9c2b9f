"""maester's Discord bot: serves /scene from the published model, with admin retrain and reload."""
