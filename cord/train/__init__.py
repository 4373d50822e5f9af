"""cord.train"""
