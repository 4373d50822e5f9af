"""cord.data"""
