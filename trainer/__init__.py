"""maester's trainer: prepare the script corpus, fine-tune GPT-2 on it, publish runs for the bot."""
