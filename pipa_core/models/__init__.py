"""pipa_core.models"""
