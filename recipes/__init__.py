"""Recipe presets (TOML) and prompt files, shipped as package data: see persona.recipes_loader."""
