"""pipa_core.uda"""
