"""cord.rewards"""
