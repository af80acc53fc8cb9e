"""pipa_core.data"""
