"""cord.models"""
