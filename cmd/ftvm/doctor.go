package main

func cmdDoctor(args []string) int { return 0 }
