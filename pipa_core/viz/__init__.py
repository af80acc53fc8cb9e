"""pipa_core.viz"""
