/* The one thing compute.c needs from its platform: a byte of output. */
void put_char(char c);
void compute(void);
