"""Sans-IO protocol: message models, validation, ledger Merkle math and checkpoint formats.

Imports nothing that does I/O (no aiohttp, SQLAlchemy, asyncio or logging framework); tests/test_layering.py
enforces it.
"""
