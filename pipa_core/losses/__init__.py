"""pipa_core.losses"""
