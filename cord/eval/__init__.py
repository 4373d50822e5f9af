"""cord.eval"""
