"""HTTP transports behind one small protocol (base.py); the aiohttp implementation is the only
module of asynchub that imports aiohttp."""
