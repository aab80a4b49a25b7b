def main():
    chan = Channel(sys.stdin.buffer, sys.stdout.buffer)
    try:
        Agent(chan).serve()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
