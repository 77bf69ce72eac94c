"""Helpers shared by every test tier (unit, api, mount, reliability, security, ...).

A helper that two test modules need lives here, not in one of them: a test module imports
nothing from another test module.
"""
