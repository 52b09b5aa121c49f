"""Audio DataModules: official dataset layouts, user folders and procedural sounds."""
