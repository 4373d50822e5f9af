"""cord.demo"""
